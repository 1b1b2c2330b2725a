"""The multi-host lab: N hosts with links of their own, an origin behind its own link, one real
node per host. Shared by ``benchmarks/fanout.py --lab`` and the ``tests/lab/`` tests.

Owns ``Lab`` (use as a context manager), ``LabUnavailable`` (why the lab cannot run here: tests
turn it into a skip), ``PullResult``, ``url_of`` and ``sweep_stale_labs``.

The network is a ``tests.support.netns.NetnsLab`` (which owns namespaces, caps, the state file
and the stale sweep; this module adds the origin and the nodes), all of it inside namespaces it
creates, nothing routed out:

- a bridge namespace ``p2plab-TOKEN-br`` holding the Linux bridge ``br0``;
- the origin namespace ``p2plab-TOKEN-o`` (address ``.2`` of the subnet, 10.214.0.0/24 by
  default) running CNCF Distribution (``docker-registry``) on port 5000;
- host namespaces ``p2plab-TOKEN-hI`` (addresses ``.10`` + I), one node each on port 5000
  (gossip on 7946): ``p2preg serve --mode mirror`` joined by gossip (``cluster="p2preg"``, static
  ``--join`` to host 0), the same without gossip (``"p2preg-solo"``: independent mirrors) or a
  Distribution proxy (``"distribution"``);
- every namespace's ``eth0`` is one end of a veth pair whose other end sits on the bridge; a
  ``tbf`` on the namespace end caps its upload, one on the bridge end its download.

The harness reaches into a namespace from a thread that ``setns(2)``-ed into it:
``pull``/``pull_many`` GET a blob through host I's own node from inside host I (released together
by a barrier, timed from the request to the last byte, the digest checked), ``metrics`` scrapes a
node's ``/metrics``, ``push_blob``/``push_image`` write to the origin from inside the origin's
namespace (no cap: local delivery), ``measure_transfer`` times a raw TCP transfer between two
namespaces (the links alone). Daemons start with ``ip netns exec`` (their PID is their own) and
are recorded in the state file ``/run/p2plab/TOKEN.json``: whatever kills the harness, the next
lab removes them (``sweep_stale_labs``, run at every start). ``kill(i)`` SIGKILLs node i by PID.
Origin blob GETs and the bytes they sent come from the origin's own log (``origin_blob_gets``).

Needs root, ``ip``, ``tc`` and ``docker-registry``; ``LabUnavailable`` says which is missing.
Must not import p2preg: nodes are driven from the outside, as separate processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.common import write_blob_file
from tests.support.daemons import Distribution, ManagedProcess, distribution_config
from tests.support.netns import (
    NetnsHost,
    NetnsLab,
    enter_netns,
    in_netns,
    link_rate_bytes_s,
    sweep_stale,
)
from tests.support.node import MetricSample, parse_metrics

PREFIX = "p2plab-"  # names and state files of their own: never swept by other labs
STATE_DIR = Path("/run/p2plab")
REPO_ROOT = Path(__file__).resolve().parents[1]
HTTP_PORT = 5000
GOSSIP_PORT = 7946
CLUSTERS = ("p2preg", "p2preg-solo", "distribution")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
START_TIMEOUT_S = 30.0
MEMBERSHIP_TIMEOUT_S = 60.0
_CLONE_NEWNET = 0x40000000
_READ_BYTES = 256 * 1024
T = TypeVar("T")


__all__ = ["CLUSTERS", "Lab", "LabUnavailable", "PullResult", "check_available",
           "link_rate_bytes_s", "sweep_stale_labs", "url_of"]


def sweep_stale_labs() -> list[str]:
    """Remove the labs left behind by dead harnesses (``tests.support.netns.sweep_stale``)."""
    return sweep_stale(PREFIX, STATE_DIR)


class LabUnavailable(RuntimeError):
    """The lab cannot run on this machine; the message says why (tests skip with it)."""


def check_available() -> None:
    """Raise ``LabUnavailable`` unless this process can build a lab."""
    if sys.platform != "linux":
        raise LabUnavailable("the lab needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LabUnavailable("the lab needs root (network namespaces, tc)")
    for tool in ("ip", "tc", "docker-registry"):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"the lab needs `{tool}` (see deploy/dev-setup.sh)")


# ---------------------------------------------------------------------------------- the lab


def url_of(host: NetnsHost) -> str:
    """The base URL of the node (or origin) on ``host``."""
    return f"http://{host.address}:{HTTP_PORT}"


@dataclass(frozen=True)
class PullResult:
    """One host's GET of a blob through its own node."""

    host: int
    status: int
    nbytes: int
    digest_ok: bool
    started: float  # time.monotonic() when the request was sent
    finished: float  # time.monotonic() at the last byte (or the failure)
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class Lab:
    """``n_hosts`` hosts, an origin, one node per host. See the module docstring.

    ``with Lab(4, host_mbit=128, origin_mbit=64) as lab:`` builds the network and starts the
    origin; ``lab.start_nodes("p2preg")`` starts the nodes (``stop_nodes`` then another kind
    reuses the network; every start has fresh data directories). Caps are Mbit/s; ``*_up`` /
    ``*_down`` override one direction (``host_mbit=128, host_down_mbit=256``).
    """

    n_hosts: int
    host_mbit: float = 128.0
    origin_mbit: float = 64.0
    host_up_mbit: float | None = None
    host_down_mbit: float | None = None
    origin_up_mbit: float | None = None
    origin_down_mbit: float | None = None
    subnet: str = "10.214.0.0/24"
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    node_args: Sequence[str] = ()
    python: str = field(default_factory=lambda: sys.executable)
    node_src: Path = field(default_factory=lambda: REPO_ROOT)
    state_dir: Path = STATE_DIR
    net: NetnsLab | None = field(default=None, init=False)
    origin: NetnsHost | None = field(default=None, init=False)
    cluster: str | None = field(default=None, init=False)
    workdir: Path = field(default_factory=Path, init=False)
    _origin_proc: ManagedProcess | None = field(default=None, init=False)
    _nodes: list[ManagedProcess | None] = field(default_factory=list, init=False)

    # --- names and caps ---------------------------------------------------------------------

    @property
    def hosts(self) -> list[NetnsHost]:
        return self.net.hosts if self.net is not None else []

    @property
    def namespaces(self) -> list[str]:
        return self.net.namespaces if self.net is not None else []

    @staticmethod
    def _cap(specific: float | None, default: float) -> float:
        return specific if specific is not None else default

    @property
    def host_up(self) -> float:
        return self._cap(self.host_up_mbit, self.host_mbit)

    @property
    def host_down(self) -> float:
        return self._cap(self.host_down_mbit, self.host_mbit)

    @property
    def origin_up(self) -> float:
        return self._cap(self.origin_up_mbit, self.origin_mbit)

    @property
    def origin_down(self) -> float:
        return self._cap(self.origin_down_mbit, self.origin_mbit)

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Sweep stale labs, build the network, start the origin (cleans up if anything fails)."""
        check_available()
        if ipaddress.ip_network(self.subnet).num_addresses < self.n_hosts + 16:
            raise ValueError(f"{self.subnet} has no room for {self.n_hosts} hosts")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.token}-"))
        self.net = NetnsLab(self.n_hosts, subnet=self.subnet, up_mbit=self.host_up,
                            down_mbit=self.host_down, prefix=PREFIX, state_dir=self.state_dir,
                            token=self.token)  # fmt: skip
        try:
            self.net.setup()
            self.origin = self.net.add_host("o", 2, up_mbit=self.origin_up,
                                            down_mbit=self.origin_down)  # fmt: skip
            self._nodes = [None] * self.n_hosts
            self._start_origin()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every daemon the lab started (by PID), delete its namespaces and state file."""
        try:
            if self.net is not None:
                self.net.teardown()
        finally:
            for proc in [*self._nodes, self._origin_proc]:
                if proc is not None:
                    with contextlib.suppress(Exception):
                        proc.popen.wait(5)
            if self.workdir != Path() and os.environ.get("P2PLAB_KEEP") != "1":
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, host: NetnsHost, argv: Sequence[str], log: Path,
               env: dict[str, str] | None = None,
               cwd: Path = REPO_ROOT) -> ManagedProcess:  # fmt: skip
        assert self.net is not None
        proc = ManagedProcess(host.argv(argv), log, env=env, cwd=cwd)
        self.net.record_pid(proc.pid)
        return proc

    # --- the origin -------------------------------------------------------------------------

    def _distribution_config(self, name: str, listen: str, proxy: str | None) -> Path:
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        return distribution_config(root, listen, proxy)

    def _start_origin(self) -> None:
        assert self.origin is not None
        config = self._distribution_config("origin", f"{self.origin.address}:{HTTP_PORT}", None)
        self._origin_proc = self._spawn(self.origin, ["docker-registry", "serve",
                                        str(config)], self.workdir / "origin.log")  # fmt: skip
        self._wait_http(self.origin.netns, url_of(self.origin) + "/v2/", self._origin_proc)

    @property
    def origin_registry(self) -> Distribution:
        """The origin as ``tests.support.daemons.Distribution`` (its request log, blob GETs)."""
        assert self.origin is not None and self._origin_proc is not None
        return Distribution(process=self._origin_proc, root=self.workdir / "origin",
                            host=f"{self.origin.address}:{HTTP_PORT}",
                            config_path=self.workdir / "origin" / "config.yml")  # fmt: skip

    def origin_blob_gets(self, digest: str) -> tuple[int, int]:
        """(successful GETs of blob ``digest``, body bytes the origin wrote for them), from the
        origin's log (a GET cut off by a killed client counts with the bytes it got)."""
        gets = [r for r in self.origin_registry.requests() if r.method == "GET"
                and r.status in (200, 206) and f"/blobs/{digest}" in r.path]  # fmt: skip
        return len(gets), sum(r.written for r in gets)

    def push_blob(self, size_bytes: int, seed: int, repo: str = "library/lab") -> str:
        """Push ``size_bytes`` seeded pseudo-random bytes to the origin; returns the digest."""
        path = self.workdir / f"blob-{seed}"
        digest = write_blob_file(path, size_bytes, seed)
        try:
            self._push_file(repo, path, digest)
        finally:
            path.unlink()
        return digest

    def push_image(self, repo: str, tag: str, layers: Sequence[tuple[str, int]]) -> str:
        """Push a config and an OCI manifest naming ``layers`` (already pushed blobs, as
        ``(digest, size)``) as ``repo:tag``; returns the manifest digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        config_digest = self._push_bytes(repo, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d, "size": s} for d, s in layers],
        }).encode()  # fmt: skip
        status, _ = self._origin_request("PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                                         {"Content-Type": OCI_MANIFEST})  # fmt: skip
        if status != 201:
            raise RuntimeError(f"manifest PUT to the origin: {status}")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def _push_bytes(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.workdir / f"push-{digest[7:19]}"
        path.write_bytes(data)
        try:
            self._push_file(repo, path, digest)
        finally:
            path.unlink()
        return digest

    def _push_file(self, repo: str, path: Path, digest: str) -> None:
        status, headers = self._origin_request("POST", f"/v2/{repo}/blobs/uploads/")
        location = headers.get("location", "")
        if status != 202 or not location:
            raise RuntimeError(f"upload POST to the origin: {status}")
        sep = "&" if "?" in location else "?"
        target = location.split("://", 1)[-1].split("/", 1)[-1]
        with path.open("rb") as body:
            status, _ = self._origin_request(
                "PUT", f"/{target}{sep}digest={digest}", body,
                {"Content-Type": "application/octet-stream",
                 "Content-Length": str(path.stat().st_size)})  # fmt: skip
        if status != 201:
            raise RuntimeError(f"blob PUT to the origin: {status}")

    def _origin_request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str]]:
        assert self.origin is not None
        address = self.origin.address

        def request() -> tuple[int, dict[str, str]]:
            conn = http.client.HTTPConnection(address, HTTP_PORT, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}
            finally:
                conn.close()

        return in_netns(self.origin.netns, request)

    # --- the nodes --------------------------------------------------------------------------

    def start_nodes(self, cluster: str = "p2preg", extra_args: Sequence[str] = ()) -> None:
        """Start one node of kind ``cluster`` (see ``CLUSTERS``) per host, cold, and wait until
        each answers (and, for ``p2preg``, until every node sees every other alive)."""
        if cluster not in CLUSTERS:
            raise ValueError(f"cluster must be one of {CLUSTERS}")
        self.stop_nodes()
        self.cluster = cluster
        run_dir = self.workdir / f"run-{secrets.token_hex(2)}"
        run_dir.mkdir()
        key_file = run_dir / "cluster.key"
        key_file.write_text(secrets.token_hex(32) + "\n")
        path = "/healthz" if cluster != "distribution" else "/v2/"
        # Host 0 first (the others join its gossip address), then the rest together.
        for batch in ([0], range(1, self.n_hosts)):
            for i in batch:
                self._nodes[i] = self._start_node(i, self.hosts[i], cluster, run_dir, key_file,
                                                  [*self.node_args, *extra_args])  # fmt: skip
            for i in batch:
                proc = self._nodes[i]
                assert proc is not None
                self._wait_http(self.hosts[i].netns, url_of(self.hosts[i]) + path, proc)
        if cluster == "p2preg" and self.n_hosts > 1:
            self._wait_membership()

    def _start_node(self, i: int, host: NetnsHost, cluster: str, run_dir: Path, key_file: Path,
                    extra: Sequence[str]) -> ManagedProcess:  # fmt: skip
        assert self.origin is not None
        log = run_dir / f"h{i}.log"
        if cluster == "distribution":
            config = self._distribution_config(f"{run_dir.name}/h{i}",
                                               f"{host.address}:{HTTP_PORT}", url_of(self.origin))
            return self._spawn(host, ["docker-registry", "serve", str(config)], log)
        argv = [self.python, "-m", "p2preg", "serve", "--mode", "mirror",
                "--listen", f"{host.address}:{HTTP_PORT}", "--data-dir", str(run_dir / f"h{i}"),
                "--log-level", "info", "--upstream", f"docker.io={url_of(self.origin)}",
                "--no-mdns"]  # fmt: skip
        if cluster == "p2preg":
            argv += ["--gossip-listen", f"{host.address}:{GOSSIP_PORT}", "--node-name", f"h{i}",
                     "--cluster-key-file", str(key_file)]  # fmt: skip
            if i > 0:
                argv += ["--join", f"{self.hosts[0].address}:{GOSSIP_PORT}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        src = str(self.node_src)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        return self._spawn(host, [*argv, *extra], log, env, cwd=self.node_src)

    def stop_nodes(self) -> None:
        """SIGTERM every node (SIGKILL after 10 s), by PID."""
        for i, proc in enumerate(self._nodes):
            if proc is not None:
                proc.stop(10)
                self._nodes[i] = None
        self.cluster = None

    def kill(self, host: int) -> None:
        """SIGKILL host ``host``'s node at once (a crash), by its PID."""
        proc = self._nodes[host]
        if proc is not None:
            proc.kill9()

    def node_alive(self, host: int) -> bool:
        proc = self._nodes[host]
        return proc is not None and proc.alive

    def cpu_seconds(self, host: int) -> float:
        """CPU time (user + system) host ``host``'s node has used so far (0 when it is gone)."""
        proc = self._nodes[host]
        if proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def runqueue_wait_seconds(self, host: int) -> float:
        """Time host ``host``'s node has spent runnable but waiting for a CPU (its main
        thread, ``/proc/PID/schedstat``; 0 when it is gone): how starved the node is."""
        proc = self._nodes[host]
        if proc is None:
            return 0.0
        try:
            return int(Path(f"/proc/{proc.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def node_log(self, host: int) -> str:
        proc = self._nodes[host]
        return proc.log_text() if proc is not None else ""

    def _wait_http(self, netns: str, url: str, proc: ManagedProcess,
                   timeout_s: float = START_TIMEOUT_S) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status, _ = in_netns(netns, lambda: _get(url, timeout_s=2))
                if status == 200:
                    return
            except OSError:
                pass
            if not proc.alive:
                raise RuntimeError(f"{proc.argv[4:6]} exited at start:\n{proc.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout_s}s")
            time.sleep(0.1)

    def _wait_membership(self, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(range(self.n_hosts))
        while pending:
            for i in sorted(pending):
                if self.members_alive(i) == self.n_hosts:
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"hosts {sorted(pending)} did not see all members in time")
            if pending:
                time.sleep(0.2)

    def members_alive(self, host: int) -> int:
        """How many members host ``host``'s node sees alive (0 when it does not answer)."""
        h = self.hosts[host]
        try:
            status, body = in_netns(h.netns, lambda: _get(url_of(h) + "/p2p/v1/members", 5))
            members = json.loads(body)["members"] if status == 200 else []
        except (OSError, ValueError, KeyError):
            return 0
        return sum(1 for m in members if m.get("status") == "alive")

    # --- pulls and metrics ------------------------------------------------------------------

    def blob_url(self, host: int, digest: str, repo: str = "library/lab") -> str:
        return f"{url_of(self.hosts[host])}/v2/{repo}/blobs/{digest}"

    def pull(self, host: int, digest: str, repo: str = "library/lab",
             timeout_s: float = 300.0) -> PullResult:  # fmt: skip
        """Host ``host`` GETs blob ``digest`` through its own node, from inside its namespace."""
        return self.pull_many([host], digest, repo, timeout_s)[0]

    def pull_many(self, hosts: Iterable[int], digest: str, repo: str = "library/lab",
                  timeout_s: float = 300.0) -> list[PullResult]:  # fmt: skip
        """``hosts`` GET blob ``digest`` at the same instant (one thread each, inside its host's
        namespace, released together by a barrier), each through its own node."""
        return self._at_once(hosts, lambda conn: _get_blob(conn, repo, digest), timeout_s)

    def pull_image(self, hosts: Iterable[int], repo: str, tag: str,
                   timeout_s: float = 300.0) -> list[PullResult]:  # fmt: skip
        """``hosts`` pull image ``repo:tag`` at the same instant through their own nodes: the
        manifest by tag, then its config and layers one after the other, each digest checked
        (``nbytes``: the blobs' bytes; ``digest_ok``: every blob was right)."""
        return self._at_once(hosts, lambda conn: _get_image(conn, repo, tag), timeout_s)

    def _at_once(self, hosts: Iterable[int], job: Callable[[http.client.HTTPConnection],
                 tuple[int, int, bool]], timeout_s: float) -> list[PullResult]:  # fmt: skip
        chosen = list(hosts)
        barrier = threading.Barrier(len(chosen) + 1)
        futures: list[Future[PullResult]] = []
        for host in chosen:
            future: Future[PullResult] = Future()
            futures.append(future)
            threading.Thread(target=self._pull_thread, daemon=True, name=f"pull-h{host}",
                             args=(host, job, barrier, future, timeout_s)).start()
        barrier.wait(30)
        return [f.result(timeout_s + 30) for f in futures]

    def _pull_thread(self, host: int, job: Callable[[http.client.HTTPConnection],
                     tuple[int, int, bool]], barrier: threading.Barrier,
                     future: Future[PullResult], timeout_s: float) -> None:  # fmt: skip
        h = self.hosts[host]
        try:
            enter_netns(h.netns)
        except BaseException as exc:
            barrier.abort()
            future.set_exception(exc)
            return
        barrier.wait(30)
        started = time.monotonic()
        status = nbytes = 0
        ok = False
        error = ""
        conn = http.client.HTTPConnection(h.address, HTTP_PORT, timeout=timeout_s)
        try:
            status, nbytes, ok = job(conn)
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            error = repr(exc)
        finally:
            conn.close()
        future.set_result(PullResult(host, status, nbytes, ok, started, time.monotonic(), error))

    def metrics(self, host: int) -> list[MetricSample]:
        """Host ``host``'s node's ``/metrics``, parsed."""
        h = self.hosts[host]
        status, body = in_netns(h.netns, lambda: _get(url_of(h) + "/metrics", 10))
        if status != 200:
            raise RuntimeError(f"/metrics of host {host}: {status}")
        return parse_metrics(body.decode())

    def metric(self, host: int, name: str, **labels: str) -> float:
        """The sum of samples ``name`` with ``labels`` on host ``host`` (0 when absent)."""
        return sum(s.value for s in self.metrics(host)
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    # --- raw link measurements --------------------------------------------------------------

    def measure_transfer(self, sender: str, receiver: str, nbytes: int) -> float:
        """Seconds to send ``nbytes`` over TCP from namespace ``sender`` to ``receiver`` (names
        from ``hosts``/``origin``: ``"h0"``, ``"o"``); no node involved, just the links."""
        src, dst = self._named(sender), self._named(receiver)
        ready = threading.Event()
        got: Future[float] = Future()

        def receive() -> None:
            import socket

            try:
                enter_netns(dst.netns)
                with socket.create_server((dst.address, 0)) as server:
                    port_box.append(server.getsockname()[1])
                    ready.set()
                    server.settimeout(60)
                    conn, _ = server.accept()
                    with conn:
                        conn.settimeout(60)
                        total = 0
                        while total < nbytes and (data := conn.recv(_READ_BYTES)):
                            total += len(data)
                got.set_result(time.monotonic())
            except BaseException as exc:
                ready.set()
                got.set_exception(exc)

        port_box: list[int] = []
        threading.Thread(target=receive, daemon=True).start()
        ready.wait(30)
        if not port_box:
            got.result()

        def send() -> float:
            import socket

            payload = os.urandom(min(nbytes, 1 << 20))
            with socket.create_connection((dst.address, port_box[0]), timeout=60) as conn:
                start = time.monotonic()
                sent = 0
                while sent < nbytes:
                    piece = payload[: min(len(payload), nbytes - sent)]
                    conn.sendall(piece)
                    sent += len(piece)
            return start

        start = in_netns(src.netns, send)
        return got.result(120) - start

    def _named(self, name: str) -> NetnsHost:
        if name == "o":
            assert self.origin is not None
            return self.origin
        return self.hosts[int(name.removeprefix("h"))]


def _get_blob(conn: http.client.HTTPConnection, repo: str, digest: str) -> tuple[int, int, bool]:
    """GET one blob on ``conn``: (status, body bytes, 200 with the right digest)."""
    conn.request("GET", f"/v2/{repo}/blobs/{digest}")
    response = conn.getresponse()
    hasher = hashlib.sha256()
    nbytes = 0
    while chunk := response.read(_READ_BYTES):
        hasher.update(chunk)
        nbytes += len(chunk)
    return response.status, nbytes, response.status == 200 and (
        "sha256:" + hasher.hexdigest() == digest)


def _get_image(conn: http.client.HTTPConnection, repo: str, tag: str) -> tuple[int, int, bool]:
    """GET the manifest of ``repo:tag`` then every blob it names (see ``Lab.pull_image``)."""
    conn.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        return response.status, 0, False
    manifest = json.loads(body)
    total, all_ok, status = 0, True, 200
    for entry in [manifest["config"], *manifest["layers"]]:
        status, nbytes, ok = _get_blob(conn, repo, entry["digest"])
        total += nbytes
        all_ok = all_ok and ok and nbytes == entry["size"]
    return status, total, all_ok


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    """A small GET (status, body) with the standard library, no proxy, error statuses returned."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def lab(n_hosts: int, **kwargs: Any) -> Iterator[Lab]:
    """``with lab(4, host_mbit=...) as l:`` (the same as ``with Lab(4, ...) as l:``)."""
    with Lab(n_hosts, **kwargs) as built:
        yield built
