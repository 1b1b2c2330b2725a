"""Every shell block in README.md and docs/ runs as written (in a sandbox) or says why it cannot.

A block a reader is told to run is either executed here, the blocks of one page in order in one
sandbox as a reader would follow the page (tests/docs/sandbox.py), or carries
``<!-- not-runnable: REASON -->``. A new block without a marker runs by default: a command that
drifts from the code fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.markdown import ROOT, Block, all_blocks, is_shell
from tests.docs.sandbox import Sandbox

SHELL_BLOCKS = [b for b in all_blocks() if is_shell(b)]
RUNNABLE = [b for b in SHELL_BLOCKS if b.marker != "not-runnable" and b.sandbox == "default"]
PAGES = sorted({b.path for b in RUNNABLE})
# What running a page's blocks must leave behind (all inside the sandbox).
EXPECTED_FILES = {
    "docs/mirror.md": ["etc/containerd/certs.d/docker.io/hosts.toml",
                       "etc/containers/registries.conf.d/50-p2preg.conf"],
    "docs/auth.md": ["etc/p2preg/htpasswd", "etc/p2preg/tls.crt", "etc/p2preg/tls.key"],
}


def test_every_shell_block_runs_or_says_why_not() -> None:
    assert SHELL_BLOCKS, "no shell blocks found: the parser is broken"
    unexplained = [b.where for b in SHELL_BLOCKS if b.marker == "not-runnable" and
                   len(b.marker_arg) < 10]
    assert not unexplained, f"not-runnable without a reason: {unexplained}"
    unknown = [b.where for b in SHELL_BLOCKS
               if b.marker == "runnable" and b.sandbox not in ("default", "readme-run")]
    assert not unknown, f"unknown sandbox: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_runnable_blocks_of_a_page_run_in_order(page: Path, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    for block in (b for b in RUNNABLE if b.path == page):
        done = sandbox.run(block)
        assert done.returncode == 0, f"{block.where} failed:\n{block.text}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{block.where}:\n{done.stderr}"
    for name in EXPECTED_FILES.get(str(page.relative_to(ROOT)), []):
        assert (tmp_path / name).is_file(), f"{page.name}: its commands did not write {name}"


def _readme_run_block() -> Block:
    (block,) = [b for b in SHELL_BLOCKS if b.sandbox == "readme-run"]
    return block


def _checkout_copy(into: Path) -> Path:
    checkout = into / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    shutil.copytree(ROOT / "p2preg", checkout / "p2preg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return checkout


def test_the_readme_run_command_installs_and_starts_a_node(tmp_path: Path) -> None:
    """The README's first command, verbatim, in a copy of the checkout: a fresh venv, ``pip
    install .`` (from the configured package index) and ``p2preg serve``, which must reach its
    listening line. ``P2PREG_LISTEN`` keeps it off the shared port 5000."""
    block = _readme_run_block()
    checkout = _checkout_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PREG_", "VIRTUAL_ENV"))}
    env.update({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
                "P2PREG_LISTEN": "127.0.0.1:0", "PYTHONUNBUFFERED": "1",
                "PATH": ":".join(p for p in env.get("PATH", "").split(":")
                                 if ".venv" not in p)})
    proc = subprocess.Popen(["bash", "-c", block.text], cwd=checkout, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            seen.append(line)
            try:
                if json.loads(line).get("event") == "listening":
                    break
            except ValueError:
                pass
            if time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"the README command ended without a listening node:\n{''.join(seen)}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own session: bash, pip or the node
        proc.wait(30)
    assert any('"cache_quota"' in line for line in seen), "the default cache is not bounded"
    assert "Traceback" not in "".join(seen)


def test_the_readme_run_command_says_how_to_get_python3_venv(tmp_path: Path) -> None:
    """On a stock Debian ``python3 -m venv`` fails (no ensurepip): the same command prints what
    to install and stops, without running pip."""
    block = _readme_run_block()
    shims = tmp_path / "shims"
    shims.mkdir()
    python3 = shims / "python3"
    python3.write_text('#!/bin/sh\necho "The virtual environment was not created successfully '
                       'because ensurepip is not available." >&2\nexit 1\n')
    python3.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:/usr/bin:/bin"}
    done = subprocess.run(["bash", "-c", block.text], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "sudo apt-get install -y python3-venv" in done.stderr
    assert not (tmp_path / ".venv" / "bin" / "pip").exists()
    assert sys.executable  # the shim, not this interpreter, answered
