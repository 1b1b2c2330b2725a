"""Linux network namespaces for multi-host tests: N "hosts" on one bridge, cleaned up always.

Owns ``NetnsLab``: a context manager that creates a bridge namespace holding a Linux bridge and
``hosts`` namespaces (``add_host`` adds more), each linked to the bridge by a veth pair and given
one address in a private /24 (10.213.0.0/24 by default) that exists only inside those namespaces.
Optionally each link is capped both ways with ``tc ... tbf``: on the namespace's end (what it
sends, its upload) and on the bridge's end (what it receives, its download). Nothing is routed
to the machine's real network: the namespaces have no default route.

Names are ``PREFIX + TOKEN + "-" + role`` (``p2pns-1a2b3c-br``, ``...-h0``) with a per-lab random
token, so parallel runs never collide. Cleanup whatever happens: a state file
``/run/p2pns/TOKEN.json``, written before the first namespace exists, records the harness's PID
and start time and every PID the caller registers (``record_pid``). ``close`` (context exit,
``atexit``, SIGTERM/SIGHUP) kills those PIDs and deletes the namespaces. A harness killed by
SIGKILL leaves its state file behind: ``sweep_stale``, run by every lab at start, finds state files
whose harness is gone, kills the processes they recorded (only when the PID's start time still
matches: a reused PID is left alone) and any process still inside one of that lab's namespaces,
and deletes the namespaces, as well as prefixed namespaces that have no state file at all. A lab
whose harness is alive is never touched.

Also owns ``enter_netns``/``in_netns`` (run Python code, sockets included, inside a namespace from
a thread that ``setns(2)``-ed into it: network namespaces are per thread), ``GossipProcess``
(a ``python -m p2preg.gossip.service`` node process, on loopback or inside one of those
namespaces, stopped by its PID only) and ``wait_until`` for polling real processes.

The multi-host lab with an origin and one registry node per host (``benchmarks/lab.py``) is
built on ``NetnsLab``. Namespaces need root and ``ip`` (iproute2), caps ``tc``. Must not import
p2preg (it runs it as a process).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

PREFIX = "p2pns-"
STATE_DIR = Path("/run/p2pns")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


def _ip(*args: str, netns: str | None = None) -> None:
    _run(["ip", *(["-n", netns] if netns else []), *args])


def _tbf(dev: str, netns: str, mbit: float) -> None:
    """Cap what ``dev`` sends at ``mbit`` Mbit/s (burst: 10 ms at the rate, at least 32 KiB)."""
    burst = max(32 * 1024, int(mbit * 1e6 / 8 * 0.01))
    _run(["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf",
          "rate", f"{mbit}mbit", "burst", str(burst), "latency", "100ms"])  # fmt: skip


def link_rate_bytes_s(mbit: float) -> float:
    """Payload bytes/s a ``tbf`` cap of ``mbit`` Mbit/s carries for bulk TCP: the cap counts
    Ethernet frames, 1514 bytes for 1448 bytes of TCP payload (timestamps on)."""
    return mbit * 1e6 / 8 * 1448 / 1514


# ------------------------------------------------------------------------ entering a namespace

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the *calling thread* into network namespace ``name`` (sockets it opens, processes it
    starts, live there)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], T], timeout_s: float = 600.0) -> T:
    """Run ``fn()`` in a fresh thread inside namespace ``name``; its result or its exception."""
    future: Future[T] = Future()

    def body() -> None:
        try:
            enter_netns(name)
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller
            future.set_exception(exc)

    threading.Thread(target=body, name=f"netns-{name}", daemon=True).start()
    return future.result(timeout_s)


# ------------------------------------------------------------------ process records and sweeps


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _same_process(pid: int, started: int | None) -> bool:
    return started is not None and _start_time(pid) == started


def _kill_recorded(pids: Sequence[Sequence[int | None]]) -> None:
    for pid, started in pids:
        if pid is not None and _same_process(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _delete_netns(name: str) -> None:
    out = _run(["ip", "netns", "pids", name], check=False).stdout
    for pid in (int(p) for p in out.split()):  # anything still inside one of our namespaces
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run(["ip", "netns", "del", name], check=False)


def existing_netns() -> set[str]:
    """Names under /run/netns (to assert a test left nothing behind)."""
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def sweep_stale(prefix: str = PREFIX, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the labs of ``prefix`` whose harness is gone (see the module docstring); returns
    the tokens (and orphan namespace names) removed."""
    removed: list[str] = []
    live: set[str] = set()
    for path in sorted(state_dir.glob("*.json")) if state_dir.exists() else []:
        try:
            state = json.loads(path.read_text())
            alive = _same_process(int(state["owner"][0]), state["owner"][1])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            state, alive = {}, False
        if alive:
            live.add(path.stem)
            continue
        _kill_recorded(state.get("pids", []))
        for name in sorted(existing_netns()):
            if name.startswith(f"{prefix}{path.stem}-"):
                _delete_netns(name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        removed.append(path.stem)
    for name in sorted(existing_netns()):  # no state file: killed before it wrote one
        if name.startswith(prefix) and name[len(prefix):].split("-", 1)[0] not in live:
            _delete_netns(name)
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class NetnsHost:
    """One namespace "host": its namespace name, interface and address on the bridge, and the
    name of its veth's other end (on the bridge)."""

    netns: str
    ifname: str
    address: str
    bridge_port: str = ""

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this host's namespace (``ip netns exec`` execs, so the PID is the
        command's own)."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class NetnsLab:
    """``hosts_wanted`` namespaces on one bridge: ``with NetnsLab(3) as lab: lab.hosts[0]...``.

    ``up_mbit``/``down_mbit`` cap every host's link (None: uncapped); ``add_host`` adds one with
    its own address and caps. See the module docstring for names, the state file and cleanup.
    """

    hosts_wanted: int
    subnet: str = "10.213.0.0/24"
    first_host: int = 10
    up_mbit: float | None = None
    down_mbit: float | None = None
    prefix: str = PREFIX
    state_dir: Path = STATE_DIR
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[NetnsHost] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)
    _pids: list[tuple[int, int | None]] = field(default_factory=list)
    _network: Any = None
    _open: bool = False
    _previous_handlers: dict[int, Any] = field(default_factory=dict)

    @property
    def bridge_netns(self) -> str:
        return f"{self.prefix}{self.token}-br"

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"{self.token}.json"

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    def address(self, index: int) -> str:
        """The ``index``-th address of the subnet (``.2`` for ``address(2)``)."""
        return str(self._network.network_address + index)

    def setup(self) -> None:
        net = ipaddress.ip_network(self.subnet)
        if not net.is_private:
            raise ValueError(f"{self.subnet} is not a private network")
        self._network = net
        sweep_stale(self.prefix, self.state_dir)
        self._open = True
        self._write_state()
        atexit.register(self.teardown)
        self._install_signal_handlers()
        self._netns_add(self.bridge_netns)
        _ip("link", "add", "br0", "type", "bridge", netns=self.bridge_netns)
        _ip("link", "set", "br0", "up", netns=self.bridge_netns)
        for i in range(self.hosts_wanted):
            self.add_host(f"h{i}", self.first_host + i, up_mbit=self.up_mbit,
                          down_mbit=self.down_mbit)  # fmt: skip

    def add_host(self, role: str, index: int, *, up_mbit: float | None = None,
                 down_mbit: float | None = None) -> NetnsHost:  # fmt: skip
        """A namespace ``PREFIX TOKEN-role`` on the bridge at ``address(index)``, its upload
        capped at ``up_mbit`` and its download at ``down_mbit`` (None: uncapped)."""
        name = f"{self.prefix}{self.token}-{role}"
        port = f"v{role}"
        self._netns_add(name)
        # Create the pair inside the host namespace, then move the peer end to the bridge.
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", port, netns=name)
        _ip("link", "set", port, "netns", self.bridge_netns, netns=name)
        _ip("link", "set", port, "master", "br0", netns=self.bridge_netns)
        _ip("link", "set", port, "up", netns=self.bridge_netns)
        address = self.address(index)
        _ip("addr", "add", f"{address}/{self._network.prefixlen}", "dev", "eth0", netns=name)
        _ip("link", "set", "eth0", "up", netns=name)
        if up_mbit is not None:
            _tbf("eth0", name, up_mbit)  # what this namespace sends
        if down_mbit is not None:
            _tbf(port, self.bridge_netns, down_mbit)  # what the bridge sends it
        host = NetnsHost(name, "eth0", address, port)
        if role.startswith("h") and role[1:].isdigit():
            self.hosts.append(host)
        return host

    def record_pid(self, pid: int) -> None:
        """Remember ``pid`` in the state file: it is killed at teardown, or by the next lab's
        sweep if this harness dies first."""
        self._pids.append((pid, _start_time(pid)))
        self._write_state()

    def teardown(self) -> None:
        """Kill the recorded processes, delete every namespace this lab created (veths and the
        bridge go with them) and its state file. Idempotent."""
        if not self._open:
            return
        self._open = False
        _kill_recorded(self._pids)
        for name in reversed(self._created):
            _delete_netns(name)
        leftovers = [name for name in self._created if name in existing_netns()]
        self._created.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self._restore_signal_handlers()
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        if leftovers:
            raise RuntimeError(f"netns cleanup failed: {leftovers}")

    def _netns_add(self, name: str) -> None:
        self._created.append(name)
        self._write_state()
        _ip("netns", "add", name)
        _ip("link", "set", "lo", "up", netns=name)

    def _write_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        state = {"owner": [me, _start_time(me)], "pids": self._pids, "netns": self._created}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.teardown()
            previous = self._previous_handlers.get(signum)
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(128 + signum)

        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, previous)
        self._previous_handlers.clear()

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
