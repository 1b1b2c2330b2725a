"""Run a documented shell block the way a reader would, inside a throw-away directory.

Owns: ``Sandbox`` (a temp root with ``etc/``, ``var/lib/``, ``root/`` and a ``bin/`` put first on
``PATH``) and ``Sandbox.run(block)``. What the sandbox changes, and nothing else:

- absolute paths under ``/etc/``, ``/var/lib/p2preg``, ``/root/`` and ``/opt/p2preg`` in the
  block are moved under the sandbox root;
- ``p2preg`` is a wrapper around this checkout's ``python -m p2preg``: ``serve`` gets
  ``--listen 127.0.0.1:0`` (any ``--gossip-listen`` becomes ``127.0.0.1:0``; ``--join``,
  ``--join-dns`` and ``--mdns*`` are dropped: nothing may leave loopback), is started, must
  print its ``listening`` line and is then stopped with SIGTERM by PID; ``mirror-config
  --write`` without ``--target`` writes under the sandbox's ``etc/``;
- stdin holds a password (for ``p2preg htpasswd`` and Apache's ``htpasswd``);
- ``HOME``, ``XDG_*`` point into the sandbox.

Must not import p2preg (the blocks run it as a separate process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.docs.markdown import ROOT, Block

PASSWORD = "docs-test-password"
_MOVED = re.compile(r"(?<![\w.$/-])(/etc/|/var/lib/p2preg|/root/|/opt/p2preg)")

WRAPPER = textwrap.dedent(r'''
    #!{python}
    """p2preg, sandboxed for the docs tests (tests/docs/sandbox.py)."""
    import json, os, signal, subprocess, sys, time

    ROOT = os.environ["DOCS_SANDBOX"]
    args = sys.argv[1:]
    cmd = [sys.executable, "-m", "p2preg"]
    if args[:1] == ["serve"]:
        out, skip = [], 0
        dropped = ("--join", "--join-dns", "--mdns-interface", "--advertise")
        for i, a in enumerate(args):
            if skip:
                skip -= 1
                continue
            name = a.split("=", 1)[0]
            if name in ("--listen", "--gossip-listen"):
                out.append(name + "=127.0.0.1:0")
                skip = 0 if "=" in a else 1
            elif name in dropped:
                skip = 0 if "=" in a else 1
            elif name == "--mdns":
                continue
            else:
                out.append(a)
        if not any(a.startswith("--listen") for a in out):
            out.append("--listen=127.0.0.1:0")
        proc = subprocess.Popen(cmd + out, stderr=subprocess.PIPE, text=True)
        lines = []
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "listening":
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
                print("sandbox: p2preg serve started and stopped", file=sys.stderr)
                sys.exit(0)
            if time.monotonic() > deadline:
                break
        proc.kill()
        proc.wait()
        sys.stderr.write("".join(lines))
        sys.exit(proc.returncode or 1)
    if args[:1] == ["htpasswd"]:  # take one line of stdin, leave the rest for the next command
        line = b""
        while not line.endswith(b"\n"):
            byte = os.read(0, 1)
            if not byte:
                break
            line += byte
        sys.exit(subprocess.run(cmd + args, input=line).returncode)
    if args[:1] == ["mirror-config"] and "--write" in args and not any(
            a.startswith("--target") for a in args):
        client = next(a for a in args[1:] if not a.startswith("-"))
        target = {{"docker": "etc/docker/daemon.json", "containerd": "etc/containerd/certs.d",
                  "podman": "etc/containers/registries.conf.d"}}[client]
        args = [*args, "--target", os.path.join(ROOT, target)]
    os.execv(sys.executable, cmd + args)
''').lstrip()


@dataclass
class Sandbox:
    root: Path

    def __post_init__(self) -> None:
        for sub in ("bin", "etc/p2preg", "etc/docker", "etc/containerd/certs.d",
                    "etc/containers/registries.conf.d", "var/lib/p2preg", "root/.docker",
                    "home", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        wrapper = self.root / "bin" / "p2preg"
        wrapper.write_text(WRAPPER.format(python=sys.executable))
        wrapper.chmod(0o755)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PREG_")}
        env.update({
            "DOCS_SANDBOX": str(self.root),
            "PATH": f"{self.root / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}",
            "HOME": str(self.root / "home"),
            "XDG_DATA_HOME": str(self.root / "home" / ".local" / "share"),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def rewrite(self, text: str) -> str:
        root = str(self.root)
        return _MOVED.sub(lambda m: root + m.group(1), text)

    def run(self, block: Block, *, cwd: Path | None = None,
            timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        script = "set -euo pipefail\n" + self.rewrite(block.text)
        return subprocess.run(
            ["bash", "-c", script], cwd=cwd or self.root / "work", env=self.env,
            input=f"{PASSWORD}\n" * 4, capture_output=True, text=True, timeout=timeout_s,
        )
