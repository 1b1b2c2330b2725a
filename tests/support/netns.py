"""Linux network namespaces for multi-host tests: N "hosts" on one bridge, cleaned up always.

Owns ``NetnsLab``: a context manager that creates a bridge namespace holding a Linux bridge and
``hosts`` namespaces, each linked to the bridge by a veth pair and given one address in a private
/24 (10.213.0.0/24 by default) that exists only inside those namespaces. Names carry a per-lab
random token so parallel test runs never collide, and every namespace (hence every veth and the
bridge) is deleted on exit even when the test failed or setup broke half-way. Nothing is routed to
the machine's real network: the namespaces have no default route.

Also owns ``GossipProcess``: a ``python -m p2preg.gossip.service`` node process, on loopback or
inside one of those namespaces, stopped by its PID only; and ``wait_until`` for polling real
processes with a deadline.

Namespaces need root and ``ip`` (iproute2). Must not import p2preg (it runs it as a process).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class NetnsHost:
    """One namespace "host": its namespace name, interface and address on the bridge."""

    netns: str
    ifname: str
    address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this host's namespace (``ip netns exec`` execs, so the PID is the
        command's own)."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class NetnsLab:
    """``hosts`` namespaces on one bridge; use as ``with NetnsLab(3) as lab: lab.hosts[0]...``."""

    hosts_wanted: int
    subnet: str = "10.213.0.0/24"
    first_host: int = 10
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[NetnsHost] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)

    @property
    def bridge_netns(self) -> str:
        return f"p2pbr-{self.token}"

    def _netns_add(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def setup(self) -> None:
        net = ipaddress.ip_network(self.subnet)
        if not net.is_private:
            raise ValueError(f"{self.subnet} is not a private network")
        self._netns_add(self.bridge_netns)
        _ip("link", "add", "br0", "type", "bridge", netns=self.bridge_netns)
        _ip("link", "set", "br0", "up", netns=self.bridge_netns)
        for i in range(self.hosts_wanted):
            name = f"p2ph{i}-{self.token}"
            self._netns_add(name)
            # Create the pair inside the host namespace, then move the peer end to the bridge.
            _ip("link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", netns=name)
            _ip("link", "set", f"v{i}", "netns", self.bridge_netns, netns=name)
            _ip("link", "set", f"v{i}", "master", "br0", netns=self.bridge_netns)
            _ip("link", "set", f"v{i}", "up", netns=self.bridge_netns)
            address = str(net.network_address + self.first_host + i)
            _ip("addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0", netns=name)
            _ip("link", "set", "eth0", "up", netns=name)
            self.hosts.append(NetnsHost(name, "eth0", address))

    def teardown(self) -> None:
        """Delete every namespace this lab created (veths and the bridge go with them)."""
        errors: list[str] = []
        for name in reversed(self._created):
            try:
                _ip("netns", "del", name)
            except subprocess.CalledProcessError as exc:
                errors.append(f"{name}: {exc.stderr.strip()}")
        self._created.clear()
        if errors:
            raise RuntimeError("netns cleanup failed: " + "; ".join(errors))

    def __enter__(self) -> NetnsLab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()


def existing_netns() -> set[str]:
    """Names under /run/netns (to assert a test left nothing behind)."""
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


# --- gossip node processes (on loopback or inside a NetnsHost) ---------------------------------

MEMBERS_SCRIPT = (
    "import asyncio, json, sys\n"
    "from p2preg.gossip.http import fetch_members\n"
    "async def main():\n"
    "    docs = []\n"
    "    for url in sys.argv[1:]:\n"
    "        try:\n"
    "            docs.append(await fetch_members(url, timeout_s=5))\n"
    "        except Exception:\n"
    "            docs.append(None)\n"
    "    print(json.dumps(docs))\n"
    "asyncio.run(main())\n"
)


def members_from_inside(
    host: NetnsHost, urls: Sequence[str], python: str = sys.executable
) -> list[dict[str, Any] | None]:
    """``GET /p2p/v1/members`` of every URL, asked from inside ``host``'s namespace with one
    process (the bridge makes every namespaced node reachable from any of them)."""
    out = subprocess.run(
        host.argv([python, "-c", MEMBERS_SCRIPT, *urls]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=_repo_root(),
        check=True,
    )
    docs: list[dict[str, Any] | None] = json.loads(out.stdout)
    return docs


@dataclass
class GossipProcess:
    """One ``python -m p2preg.gossip.service`` process, optionally inside a namespace host.

    ``start`` waits for the JSON line with the bound addresses; ``stop``/``kill`` signal the
    process by its PID only. stderr goes to ``log_path`` for post-mortems.
    """

    args: list[str]
    log_path: str
    host: NetnsHost | None = None
    python: str = field(default_factory=lambda: sys.executable)
    info: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Launch and wait until it is ready (see ``launch`` and ``wait_ready``)."""
        self.launch()
        return self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the process without waiting (launch several, then ``wait_ready`` each)."""
        command = [self.python, "-m", "p2preg.gossip.service", *self.args]
        argv = self.host.argv(command) if self.host else command
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=_repo_root()
            )

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Read the JSON line with the bound addresses (kills the process if it never comes)."""
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            raise RuntimeError(f"gossip process did not start: {self.log_tail()}")
        self.info = json.loads(line)
        return self.info

    def terminate(self) -> None:
        """Send SIGTERM by PID without waiting (``stop`` afterwards reaps it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def name(self) -> str:
        return str(self.info["node"])

    @property
    def url(self) -> str:
        return f"http://{self.info['http']}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (a graceful leave), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def members(self) -> dict[str, Any]:
        """``GET /p2p/v1/members`` of this node (run inside its namespace when it has one)."""
        if self.host is None:
            with urllib.request.urlopen(self.url + "/p2p/v1/members", timeout=5) as resp:
                doc: dict[str, Any] = json.load(resp)
                return doc
        answer = members_from_inside(self.host, [self.url], self.python)[0]
        if answer is None:
            raise OSError(f"{self.url} did not answer")
        return answer

    def statuses(self) -> dict[str, str]:
        """name -> status as this node sees the cluster ({} when it does not answer)."""
        try:
            doc = self.members()
        except (OSError, ValueError, subprocess.SubprocessError):
            return {}
        return {m["name"]: m["status"] for m in doc["members"]}

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path) as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2, what: str = ""
) -> float:
    """Poll ``predicate`` (which asks real processes) until true; return the seconds it took.

    Raises ``AssertionError`` naming ``what`` on timeout.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - start
