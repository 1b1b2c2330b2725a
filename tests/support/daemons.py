"""Start and stop the real registry clients and servers the tests and benchmarks run against.

Owns: ``ManagedProcess`` (a child started in its own session, stopped by its PID with SIGTERM then
SIGKILL, output in a log file), ``unmount_under`` (lazy-unmount every mount below a directory),
and one context manager per program, each with its own temporary directory, on 127.0.0.1 only:

- ``distribution()``: CNCF Distribution (Debian's ``docker-registry serve``), as an origin or in
  proxy mode (``proxy_remote_url``), waits for ``/v2/``; ``Distribution.requests()`` parses its
  request log;
- ``dockerd()``: dockerd with no networking of its own, optional ``--registry-mirror``;
- ``containerd()``: containerd plus a ``ctr`` wrapper and a ``hosts.toml`` directory writer;
- ``podman()``: podman with its three config files and an isolated auth file;
- ``skopeo()``/``skopeo_copy()``/``skopeo_inspect_raw()``: thin wrappers that raise with the output.

Nothing here talks to the internet: every daemon listens on loopback or a unix socket, and a
fallback to docker.io is made visible (tests assert on the registry's own records).

Must not import p2preg: these fixtures drive third-party programs only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 15.0
DEFAULT_COMMAND_TIMEOUT_S = 180.0


class DaemonError(RuntimeError):
    """A daemon did not start, or a wrapped command failed (the message carries its output)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot bind :0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def short_tempdir(prefix: str) -> Path:
    """A new directory under /tmp with a short path (unix sockets allow ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --------------------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child process in its own session whose stdout+stderr go to ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout_s``; then kill what is left of its process group.

        Returns the exit status (negative for a signal, as ``subprocess`` reports it).
        """
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._kill_group_leftovers()
        return self.popen.wait()

    def kill9(self) -> int:
        """SIGKILL by PID at once (crash tests) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait()

    def _kill_group_leftovers(self) -> None:
        # The child led a new session, so its group id is its PID: helpers it spawned (dockerd's
        # containerd) are killed by that id, never by name.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def wait_for_log(
    process: ManagedProcess, needle: str, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> str:
    """Wait until ``needle`` appears in the process log; return the first line holding it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in process.log_text().splitlines():
            if needle in line:
                return line
        if not process.alive:
            raise DaemonError(f"{process.argv[0]} exited:\n{process.log_text()[-4000:]}")
        time.sleep(0.05)
    raise DaemonError(
        f"{process.argv[0]}: no {needle!r} in {timeout_s}s:\n{process.log_text()[-4000:]}"
    )


def wait_for_http(
    url: str, process: ManagedProcess | None = None, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> None:
    """Wait until ``url`` answers any HTTP status below 500 (401 counts: the server is up)."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last_error = str(exc)
        except OSError as exc:
            last_error = str(exc)
        if process is not None and not process.alive:
            raise DaemonError(f"{process.argv[0]} exited:\n{process.log_text()[-4000:]}")
        time.sleep(0.05)
    raise DaemonError(f"{url} not answering after {timeout_s}s: {last_error}")


def wait_for_path(
    path: Path, process: ManagedProcess, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        if not process.alive:
            raise DaemonError(f"{process.argv[0]} exited:\n{process.log_text()[-4000:]}")
        time.sleep(0.05)
    raise DaemonError(f"{path} did not appear in {timeout_s}s:\n{process.log_text()[-4000:]}")


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command; with ``check`` raise ``DaemonError`` carrying its output on failure."""
    result = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        input=input_bytes.decode() if input_bytes is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if check and result.returncode != 0:
        raise DaemonError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(root.resolve()).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount everything mounted below ``root`` (overlay, shm, nsfs...); return them."""
    if not root.exists():
        return []
    unmounted = mounts_under(root)
    for mount_point in unmounted:
        subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    return unmounted


def remove_tree(root: Path) -> None:
    """Unmount then delete a daemon's directory; a busy leftover is not an error at teardown."""
    unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ distribution


@dataclass(frozen=True, slots=True)
class DistributionRequest:
    """One line of Distribution's access log."""

    method: str
    path: str  # with the query string
    status: int
    written: int = 0  # body bytes the registry wrote


@dataclass
class Distribution:
    """A running ``docker-registry serve``."""

    process: ManagedProcess
    root: Path
    host: str  # "127.0.0.1:PORT", as clients write it in references
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def requests(self) -> list[DistributionRequest]:
        """Every request the registry has logged as completed, oldest first."""
        out: list[DistributionRequest] = []
        for line in self.process.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") != "response completed" or "http.request.uri" not in entry:
                continue
            out.append(
                DistributionRequest(
                    method=str(entry.get("http.request.method", "")),
                    path=str(entry["http.request.uri"]),
                    status=int(entry.get("http.response.status", 0)),
                    written=int(entry.get("http.response.written", 0)),
                )
            )
        return out

    def blob_gets(self, digest: str) -> int:
        """How many successful GETs of blob ``digest`` the registry served."""
        return sum(
            1
            for r in self.requests()
            if r.method == "GET" and r.status in (200, 206) and f"/blobs/{digest}" in r.path
        )


def distribution_config(
    base: Path, addr: str, proxy_remote_url: str | None = None, htpasswd: Path | None = None
) -> Path:
    """Write ``base/config.yml`` for Distribution listening on ``addr``, storing under
    ``base/data``, JSON logs with one ``response completed`` line per request (what
    ``Distribution.requests`` reads); a proxy of ``proxy_remote_url`` when given."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(base / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": addr, "secret": "p2preg-test-secret"},
    }
    if proxy_remote_url is not None:
        config["proxy"] = {"remoteurl": proxy_remote_url}
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "p2preg-test", "path": str(htpasswd)}}
    config_path = base / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    return config_path


@contextlib.contextmanager
def distribution(
    *,
    proxy_remote_url: str | None = None,
    htpasswd: Path | None = None,
    root: Path | None = None,
) -> Iterator[Distribution]:
    """Run Distribution 2.8 on 127.0.0.1 (a free port); yields once ``/v2/`` answers.

    With ``proxy_remote_url`` it is a pull-through cache of that registry (which must already be up:
    Distribution panics at start otherwise).
    """
    own_root = root is None
    base = short_tempdir("p2p-dist-") if root is None else root
    base.mkdir(parents=True, exist_ok=True)
    config_path = distribution_config(base, "127.0.0.1:0", proxy_remote_url, htpasswd)
    process = ManagedProcess(["docker-registry", "serve", str(config_path)], base / "registry.log")
    try:
        line = wait_for_log(process, "listening on ")
        host = json.loads(line)["msg"].rsplit(" ", 1)[1]
        wait_for_http(f"http://{host}/v2/", process)
        yield Distribution(process=process, root=base, host=host, config_path=config_path)
    finally:
        process.stop()
        if own_root:
            remove_tree(base)


# ------------------------------------------------------------------------------------------ dockerd


@dataclass
class Dockerd:
    """A running dockerd and the environment its CLI needs."""

    process: ManagedProcess
    root: Path
    socket_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def docker(
        self, *args: str, check: bool = True, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return run_command(["docker", *args], env=self.env, check=check, timeout_s=timeout_s)


@contextlib.contextmanager
def dockerd(*, registry_mirror: str | None = None) -> Iterator[Dockerd]:
    """Run dockerd (root) with no iptables, no bridge and its own data/exec roots.

    ``registry_mirror`` (e.g. ``http://127.0.0.1:PORT``) becomes ``--registry-mirror``. 127.0.0.0/8
    is an insecure registry by default, so plain HTTP on loopback works without more flags.
    """
    base = short_tempdir("p2p-dkr-")
    sock = base / "docker.sock"
    daemon_json = base / "daemon.json"
    daemon_json.write_text("{}")
    argv = [
        "dockerd",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--config-file", str(daemon_json),
        "--data-root", str(base / "data"),
        "--exec-root", str(base / "exec"),
        "--pidfile", str(base / "docker.pid"),
        "--host", f"unix://{sock}",
    ]  # fmt: skip
    if registry_mirror is not None:
        argv += ["--registry-mirror", registry_mirror]
    cli_config = base / "cli"
    cli_config.mkdir()
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(cli_config)}
    process = ManagedProcess(argv, base / "dockerd.log")
    try:
        wait_for_path(sock, process, timeout_s=60)
        daemon = Dockerd(process=process, root=base, socket_path=sock, env=env)
        _wait_for_command(lambda: daemon.docker("version", check=False).returncode == 0, process)
        yield daemon
    finally:
        process.stop(timeout_s=30)
        # dockerd starts its containerd (and containerd its shims) in sessions of their own.
        stop_processes_mentioning(base)
        remove_tree(base)


def stop_processes_mentioning(root: Path, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process whose command line mentions ``root`` (a daemon's own
    temporary directory, unique to it): the helpers a daemon started in sessions of their own
    (dockerd's containerd, containerd shims). Signalled by PID; returns the PIDs found."""
    needle = str(root).encode()
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
            time.sleep(0.05)
        if all(_gone(pid) for pid in pids):
            break
    return pids


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waits for its parent only


def _wait_for_command(
    ready: Callable[[], bool], process: ManagedProcess, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not process.alive:
            raise DaemonError(f"{process.argv[0]} exited:\n{process.log_text()[-4000:]}")
        time.sleep(0.1)
    raise DaemonError(f"{process.argv[0]} not ready in {timeout_s}s:\n{process.log_text()[-4000:]}")


# --------------------------------------------------------------------------------------- containerd


@dataclass
class Containerd:
    """A running containerd; ``ctr()`` runs ctr against it, ``hosts_dir`` is for ``--hosts-dir``."""

    process: ManagedProcess
    root: Path
    address: Path
    hosts_dir: Path
    namespace: str = "p2preg-test"

    def ctr(
        self, *args: str, check: bool = True, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.address), "--namespace", self.namespace, *args]
        return run_command(argv, check=check, timeout_s=timeout_s)

    def write_hosts(
        self, registry: str, mirror_url: str, *, fallback_server: str | None = None
    ) -> Path:
        """Write ``hosts_dir/<registry>/hosts.toml`` that sends pulls of ``registry`` to a mirror.

        Without ``fallback_server`` the mirror is the ``server`` itself, so containerd has nowhere
        else to go (a failing mirror fails the pull instead of silently reaching the internet).
        """
        directory = self.hosts_dir / registry
        directory.mkdir(parents=True, exist_ok=True)
        if fallback_server is None:
            text = f'server = "{mirror_url}"\n\n[host."{mirror_url}"]\n'
        else:
            text = f'server = "{fallback_server}"\n\n[host."{mirror_url}"]\n'
        text += '  capabilities = ["pull", "resolve"]\n'
        path = directory / "hosts.toml"
        path.write_text(text)
        return path


@contextlib.contextmanager
def containerd() -> Iterator[Containerd]:
    """Run containerd (root) with its own root, state and socket; the CRI plugin is disabled."""
    base = short_tempdir("p2p-ctd-")
    address = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{address}"\n'
        "[ttrpc]\n"
        f'  address = "{address}.ttrpc"\n'
        "[debug]\n"
        f'  address = "{base / "debug.sock"}"\n'
    )
    hosts_dir = base / "hosts"
    hosts_dir.mkdir()
    process = ManagedProcess(["containerd", "--config", str(config)], base / "containerd.log")
    try:
        wait_for_path(address, process)
        daemon = Containerd(process=process, root=base, address=address, hosts_dir=hosts_dir)
        _wait_for_command(lambda: daemon.ctr("version", check=False).returncode == 0, process)
        yield daemon
    finally:
        process.stop(timeout_s=30)
        stop_processes_mentioning(base)  # shims of containers a failed test left running
        remove_tree(base)


# ------------------------------------------------------------------------------------------- podman


@dataclass
class Podman:
    """Podman with isolated configuration, storage and auth file."""

    root: Path
    env: dict[str, str]

    def podman(
        self,
        *args: str,
        check: bool = True,
        timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        input_bytes: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run_command(
            ["podman", *args], env=self.env, check=check, timeout_s=timeout_s,
            input_bytes=input_bytes,
        )  # fmt: skip


@contextlib.contextmanager
def podman(
    *, mirror: str | None = None, insecure_registries: Sequence[str] = ()
) -> Iterator[Podman]:
    """Podman configured through ``CONTAINERS_*`` files in its own directory.

    ``mirror`` (``HOST:PORT``) becomes a plain-HTTP ``[[registry.mirror]]`` of docker.io; every
    entry of ``insecure_registries`` is declared insecure (HTTP) as well.
    """
    base = short_tempdir("p2p-pod-")
    registries = ['unqualified-search-registries = ["docker.io"]\n']
    registries.append('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n')
    if mirror is not None:
        registries.append(f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n')
    for host in insecure_registries:
        registries.append(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    (base / "registries.conf").write_text("\n".join(registries))
    (base / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        'netns = "none"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{base / "events.log"}"\n'
        f'tmp_dir = "{base / "tmp"}"\n'
    )
    (base / "storage.conf").write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'runroot = "{base / "run"}"\n'
        f'graphroot = "{base / "graph"}"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
        "CONTAINERS_CONF": str(base / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
        "REGISTRY_AUTH_FILE": str(base / "auth.json"),
        "XDG_RUNTIME_DIR": str(base / "xdg"),
    }
    (base / "xdg").mkdir(mode=0o700)
    (base / "auth.json").write_text('{"auths": {}}')
    try:
        yield Podman(root=base, env=env)
    finally:
        remove_tree(base)


# ------------------------------------------------------------------------------------------- skopeo


def skopeo(
    *args: str, check: bool = True, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run skopeo with an empty policy-free configuration (``--insecure-policy``)."""
    return run_command(["skopeo", "--insecure-policy", *args], check=check, timeout_s=timeout_s)


def skopeo_copy(
    src: str,
    dest: str,
    *,
    all_images: bool = False,
    dest_format: str | None = None,
    src_creds: str | None = None,
    dest_creds: str | None = None,
    preserve_digests: bool = True,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy`` between ``oci:``/``docker://`` references, TLS verification off both ways."""
    args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--retry-times", "0"]
    if all_images:
        args.append("--all")
    if dest_format is not None:
        args += ["--format", dest_format]
    elif preserve_digests:
        args.append("--preserve-digests")
    if src_creds is not None:
        args += ["--src-creds", src_creds]
    if dest_creds is not None:
        args += ["--dest-creds", dest_creds]
    return skopeo(*args, src, dest, check=check)


def skopeo_inspect_raw(ref: str, *, creds: str | None = None) -> bytes:
    """The exact manifest bytes a registry serves for ``ref`` (``skopeo inspect --raw``)."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        args += ["--creds", creds]
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args, ref], capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise DaemonError(f"skopeo inspect {ref}: {result.stderr.decode(errors='replace')}")
    return result.stdout
