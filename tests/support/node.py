"""Run ``p2preg serve`` as a real subprocess for client, crash and benchmark tests.

Owns: ``P2pregNode`` (start, wait for the ``"event": "listening"`` line, stop with SIGTERM by PID
then SIGKILL, ``kill9()`` for crash tests, ``restart()`` on the same data dir, the node's own
records: its JSON log lines and ``/metrics``), the ``running_node`` context manager and the
``p2preg_node`` pytest fixture (a registry-mode node with a fresh data dir).

The node is started exactly as a user would start it, so mirror mode reuses all of this with
``mode="mirror"`` and ``extra_args=["--upstream", "docker.io=http://..."]``.

Must not import p2preg: the node is tested from the outside, as a separate process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import DaemonError, ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete, synchronous HTTP response (for assertions from sync tests)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        """The ``code`` of each entry of an OCI error body (empty if it is not one)."""
        try:
            doc = self.json()
        except ValueError:
            return []
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if not isinstance(errors, list):
            return []
        return [str(e.get("code")) for e in errors if isinstance(e, dict)]


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    timeout_s: float = 30.0,
) -> HttpResponse:
    """One HTTP request with the standard library; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpResponse(response.status, _lower(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return HttpResponse(exc.code, _lower(exc.headers), exc.read())


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One Prometheus sample line: ``name{labels} value``."""

    name: str
    labels: dict[str, str]
    value: float


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[MetricSample]:
    """Parse the Prometheus text exposition format (enough of it for assertions)."""
    samples: list[MetricSample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL_RE.findall(match.group(2) or ""))
        samples.append(MetricSample(match.group(1), labels, float(match.group(3))))
    return samples


class P2pregNode:
    """A ``p2preg serve`` subprocess with its data dir and log file.

    ``url`` is the base URL from the node's listening line; ``host`` is ``127.0.0.1:PORT`` as image
    references write it. The log file survives restarts (one file, appended), so records from
    before a crash stay readable.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        mode: str = "registry",
        htpasswd: Path | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        log_level: str = "info",
    ) -> None:
        self.data_dir = data_dir
        self.mode = mode
        self.htpasswd = htpasswd
        self.extra_args = list(extra_args)
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.node.log"
        self.log_level = log_level
        self.process: ManagedProcess | None = None
        self.url = ""
        self.starts = 0

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://").removeprefix("https://")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DaemonError("node not started")
        return self.process.pid

    def argv(self, listen: str = "127.0.0.1:0") -> list[str]:
        argv = [
            sys.executable, "-m", "p2preg", "serve",
            "--mode", self.mode,
            "--listen", listen,
            "--data-dir", str(self.data_dir),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.htpasswd is not None:
            argv += ["--htpasswd", str(self.htpasswd)]
        return argv + self.extra_args

    def start(self, timeout_s: float = START_TIMEOUT_S) -> P2pregNode:
        """Start the node and wait for its listening line (a new free port on every start)."""
        if self.process is not None and self.process.alive:
            raise DaemonError("node already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self.process = ManagedProcess(self.argv(), self.log_path, env=env, cwd=REPO_ROOT)
        self.starts += 1
        self.url = self._wait_listening(offset, timeout_s)
        return self

    def _wait_listening(self, offset: int, timeout_s: float) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self._events_from(offset):
                if event.get("event") == "listening" and isinstance(event.get("url"), str):
                    return str(event["url"]).rstrip("/")
            if not self.process.alive:
                raise DaemonError(f"p2preg exited at start:\n{self._tail()}")
            time.sleep(0.02)
        self.process.stop()
        raise DaemonError(f"p2preg printed no listening line in {timeout_s}s:\n{self._tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout_s``; returns the exit status."""
        if self.process is None:
            return 0
        return self.process.stop(timeout_s)

    def kill9(self) -> int:
        """SIGKILL the node at once (a crash); the data dir is left as the kill found it."""
        if self.process is None:
            raise DaemonError("node not started")
        return self.process.kill9()

    def restart(self) -> P2pregNode:
        """Stop (gracefully, if still running) and start again on the same data dir."""
        if self.process is not None and self.process.alive:
            self.stop()
        return self.start()

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> HttpResponse:
        """A synchronous HTTP request to ``path`` on the node (``/v2/...``)."""
        return http_request(method, f"{self.url}{path}", headers=headers, data=data)

    # --------------------------------------------------------------------------- the node's records

    def events(self) -> list[dict[str, Any]]:
        """Every JSON object line the node has logged (all starts), oldest first."""
        return list(self._events_from(0))

    def access_log(self) -> list[dict[str, Any]]:
        """Access records (one per answered request: method, path, status, bytes...), oldest
        first. A record is a log line with a method and a path, or such an object nested in the
        line as ``access`` or as the JSON text of ``msg`` (``p2preg.access`` logger)."""
        records: list[dict[str, Any]] = []
        for event in self.events():
            record = _access_record(event)
            if record is not None:
                records.append(record)
        return records

    def requests_matching(self, method: str, path_fragment: str) -> list[dict[str, Any]]:
        """Access log records of ``method`` requests whose path contains ``path_fragment``."""
        return [
            entry
            for entry in self.access_log()
            if _method(entry) == method.upper() and path_fragment in (_path(entry) or "")
        ]

    def served(self, method: str, path_fragment: str, statuses: Sequence[int] = (200,)) -> int:
        """How many requests with ``method`` whose path contains ``path_fragment`` got a status
        in ``statuses`` (from the access log)."""
        return sum(
            1 for e in self.requests_matching(method, path_fragment) if _status(e) in statuses
        )

    def wait_served(
        self,
        method: str,
        path_fragment: str,
        statuses: Sequence[int] = (200,),
        *,
        at_least: int = 1,
        timeout_s: float = 10.0,
    ) -> int:
        """Like ``served`` but waits (polling the log) until the count reaches ``at_least``:
        the node writes a request's access record just after the response, so a client can
        see the response before the record exists. Returns the last count (a caller asserts)."""
        deadline = time.monotonic() + timeout_s
        while True:
            count = self.served(method, path_fragment, statuses)
            if count >= at_least or time.monotonic() >= deadline:
                return count
            time.sleep(0.02)

    def metrics_text(self) -> str:
        response = self.request("GET", "/metrics")
        if response.status != 200:
            raise DaemonError(f"GET /metrics answered {response.status}")
        return response.body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for sample in parse_metrics(self.metrics_text()):
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
        return total

    def wait_metric(
        self, name: str, at_least: float, *, timeout_s: float = 10.0, **labels: str
    ) -> float:
        """``metric`` polled until it reaches ``at_least`` or ``timeout_s`` passes (metrics are
        recorded when a response is done, just after the client has it); returns the last value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.metric(name, **labels)
            if value >= at_least or time.monotonic() >= deadline:
                return value
            time.sleep(0.05)

    def _events_from(self, offset: int) -> Iterator[dict[str, Any]]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                data = log.read()
        except FileNotFoundError:
            return
        for raw in data.splitlines():
            if not raw.startswith(b"{"):
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no log)"


def _access_record(event: dict[str, Any]) -> dict[str, Any] | None:
    candidates: list[Any] = [event.get("access"), event]
    message = event.get("msg")
    if isinstance(message, str) and message.startswith("{"):
        with contextlib.suppress(ValueError):
            candidates.insert(0, json.loads(message))
    for candidate in candidates:
        if isinstance(candidate, dict) and _method(candidate) and _path(candidate):
            return candidate
    return None


def _method(entry: dict[str, Any]) -> str | None:
    value = entry.get("method") or entry.get("http.request.method")
    return str(value).upper() if value else None


def _path(entry: dict[str, Any]) -> str | None:
    value = entry.get("path") or entry.get("uri") or entry.get("http.request.uri")
    if value is None:
        return None
    text = str(value)
    return text if text.startswith("/") else None


def _status(entry: dict[str, Any]) -> int | None:
    value = entry.get("status") or entry.get("http.response.status")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def running_node(
    data_dir: Path | None = None,
    *,
    mode: str = "registry",
    htpasswd: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[P2pregNode]:
    """A started node that is stopped by PID on exit (with its own temp dir unless given one)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p2p-node-")))
            data_dir = tmp / "data"
        node = P2pregNode(data_dir, mode=mode, htpasswd=htpasswd, extra_args=extra_args)
        node.start()
        try:
            yield node
        finally:
            node.stop()


@pytest.fixture
def p2preg_node(tmp_path: Path) -> Iterator[P2pregNode]:
    """A registry-mode ``p2preg serve`` on 127.0.0.1 with a fresh data dir."""
    with running_node(tmp_path / "data") as node:
        yield node
