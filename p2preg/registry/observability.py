"""The aiohttp side of observability: per-request bookkeeping, ``/metrics`` and ``/healthz``.

Owns: ``Observability`` (its ``middleware``, the ``on_response_prepare`` hook and the two endpoint
handlers, wired by ``setup(app)``; ``metrics_app()``, the ``/metrics``-only app of
``--metrics-listen``), ``AccessLogger`` (the ``AbstractAccessLogger`` subclass the
node passes to ``web.AppRunner(access_log_class=AccessLogger)``), ``finish_request`` and
``route_label``, and the ``request[...]`` keys handlers fill in (``SOURCE_KEY`` and friends).

When a request counts: aiohttp calls ``AccessLogger.log`` after the response has been written
completely (``write_eof``), or after the client vanished while aiohttp itself was writing (a
``FileResponse`` or a plain ``Response``). That is the moment bytes are known, so requests,
latency, bytes served and the access log line are all recorded there, once. The one case aiohttp
never logs is a handler-streamed ``StreamResponse`` whose client disconnects mid-body (the
handler's ``write`` raises and aiohttp drops the connection silently): the middleware records
that request itself, from the response captured by the ``on_response_prepare`` hook, marked
``aborted``. A per-request flag makes sure nothing is counted twice. A request whose client went
away before its answer was complete is recorded with status 499 (nginx's "client closed
request"): the error middleware answers 499 when the client left before the response started, and
an aborted body whose connection is closed is recorded as 499 here; neither is a 5xx.

Wiring (all three are needed): ``obs.middleware`` outermost in the app's middlewares (so 401s and
error JSON are counted too), ``obs.setup(app)`` (hook + routes), ``AccessLogger`` on the runner.
The access logger must stay enabled for metrics to count; silence the lines with the
``p2preg.access`` logger's level instead.

Must not import storage, handlers, the mirror or the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from p2preg.clock import Clock, WallClock
from p2preg.registry.accesslog import AccessRecord, emit
from p2preg.registry.errors import CLIENT_CLOSED_REQUEST, client_gone, is_client_disconnect
from p2preg.registry.health import Health
from p2preg.registry.metrics import RegistryMetrics, exposition
from p2preg.registry.requestkeys import (
    DIGEST_KEY,
    PEER_KEY,
    SOURCE_KEY,
    UPSTREAM_KEY,
    USER_KEY,
    request_value,
)
from p2preg.registry.sentbytes import BodyCounter, body_bytes_sent

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATE_KEY = web.RequestKey("p2preg_observe", object)
METRICS_PATH = "/metrics"
#: Route patterns under this prefix answer peers with blob bytes (``p2p.source.BLOBS_PATH``; this
#: package must not import ``p2p``, a test pins the two equal): the body bytes of their 200/206
#: answers are counted as ``p2preg_p2p_sent_bytes_total``.
PEER_BLOBS_ROUTE_PREFIX = "/p2p/v1/blobs/"
HEALTHZ_PATH = "/healthz"


@dataclass(slots=True)
class _RequestState:
    observability: Observability
    started: float  # event loop time when the middleware saw the request
    counter: BodyCounter
    response: web.StreamResponse | None = None
    finished: bool = False


def _state(request: web.BaseRequest) -> _RequestState | None:
    state = request.get(_STATE_KEY)
    return state if isinstance(state, _RequestState) else None


def route_label(request: web.BaseRequest) -> str:
    """The matched route's pattern (``/v2/{name}/blobs/{digest}``), or ``"other"``."""
    if not isinstance(request, web.Request):
        return "other"
    try:
        match_info = request.match_info
    except (AssertionError, AttributeError, RuntimeError):
        return "other"
    if match_info is None or match_info.http_exception is not None:
        return "other"
    resource = match_info.route.resource
    if resource is None:
        return "other"
    return resource.canonical


def _blob_digest(request: web.BaseRequest, route: str) -> str | None:
    explicit = request_value(request, DIGEST_KEY)
    if explicit is not None:
        return explicit
    if "/blobs/" in route and isinstance(request, web.Request):
        digest = request.match_info.get("digest")
        return digest if digest else None
    return None


def _clip(value: str | None, limit: int = 256) -> str | None:
    """Client-chosen text, bounded so one request cannot write a huge log line."""
    return value if value is None or len(value) <= limit else value[:limit] + "..."


def finish_request(
    request: web.BaseRequest,
    response: web.StreamResponse,
    duration_s: float,
    *,
    client_left: bool = False,
) -> AccessRecord | None:
    """Record one finished request (metrics + access log line); None when already recorded.

    ``client_left``: the body stopped because the client went away (also inferred from a closed
    connection); such a request is recorded as 499.
    """
    state = _state(request)
    if state is not None:
        if state.finished:
            return None
        state.finished = True
    nbytes, completed = body_bytes_sent(
        request, response, state.counter if state is not None else None
    )
    route = route_label(request)
    source = request_value(request, SOURCE_KEY)
    aborted = response.prepared and not completed and request.method != "HEAD"
    # A body cut short because the client left is the client's doing (nginx's 499), not a 200.
    left = client_left or client_gone(request)
    status = CLIENT_CLOSED_REQUEST if aborted and left else response.status
    if state is not None:
        metrics = state.observability.metrics
        metrics.request_finished(route, request.method, status, duration_s)
        if source is not None:
            metrics.blob_bytes_served(source, nbytes)
        if route.startswith(PEER_BLOBS_ROUTE_PREFIX) and response.status in (200, 206):
            metrics.peer_bytes_sent(nbytes)  # blob bytes only: never a refusal's error JSON
        ts = state.observability.wall_clock.now()
    else:
        ts = WallClock().now()
    record = AccessRecord(
        ts=ts,
        remote=request.remote,
        method=request.method,
        path=request.path,
        route=route,
        status=status,
        bytes=nbytes,
        duration_ms=duration_s * 1000.0,
        user=request_value(request, USER_KEY),
        source=source,
        digest=_blob_digest(request, route),
        upstream=request_value(request, UPSTREAM_KEY),
        peer=request_value(request, PEER_KEY),
        ns=_clip(request.query.get("ns")),
        user_agent=_clip(request.headers.get("User-Agent")),
        aborted=aborted,
    )
    emit(record, level=access_level(route, status))
    return record


def access_level(route: str, status: int) -> int:
    """The access log level of a request: DEBUG for a peer's piece request refused as busy
    (503) or missing (404) -- the swarm's routine chatter, more than half of all piece
    answers in a fan-out, each one a line and ~10% of a node's CPU there (docs/p2p.md);
    still counted in the metrics -- INFO for everything else."""
    if route.startswith(PEER_BLOBS_ROUTE_PREFIX) and status in (404, 503):
        return logging.DEBUG
    return logging.INFO


class AccessLogger(AbstractAccessLogger):
    """aiohttp's hook after each response: records it (see the module docstring).

    aiohttp constructs it with its own logger and format; both are ignored: lines go to the
    ``p2preg.access`` logger as JSON.
    """

    @property
    def enabled(self) -> bool:
        return True  # metrics are recorded here too, so never let aiohttp skip the call

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            finish_request(request, response, time)
        except Exception:  # bookkeeping must never disturb serving
            log.exception("recording a finished request failed")


class Observability:
    """One node's metrics and health, plus the aiohttp pieces that feed and expose them."""

    def __init__(
        self,
        metrics: RegistryMetrics | None = None,
        health: Health | None = None,
        *,
        wall_clock: Clock | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else RegistryMetrics()
        self.health = health if health is not None else Health()
        self.wall_clock: Clock = wall_clock if wall_clock is not None else WallClock()
        self.middleware = self._make_middleware()
        self._hook_checked = False

    def setup(self, app: web.Application) -> None:
        """Add the response hook and the ``/metrics`` and ``/healthz`` routes to ``app``."""
        app.on_response_prepare.append(self.on_response_prepare)
        app.router.add_get(METRICS_PATH, self.metrics_handler)
        app.router.add_get(HEALTHZ_PATH, self.healthz_handler)

    def metrics_app(self) -> web.Application:
        """An app serving ``GET /metrics`` and nothing else (``--metrics-listen``); its
        scrapes are counted like every request."""
        app = web.Application(middlewares=[self.middleware])
        app.on_response_prepare.append(self.on_response_prepare)
        app.router.add_get(METRICS_PATH, self.metrics_handler)
        return app

    def _make_middleware(self) -> Middleware:
        @web.middleware
        async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            loop = asyncio.get_running_loop()
            if not self._hook_checked:
                self._check_hook(request.app)
            state = _RequestState(self, loop.time(), BodyCounter())
            state.counter.attach(request)
            request[_STATE_KEY] = state
            try:
                return await handler(request)
            except BaseException as exc:
                self._record_abandoned(request, state, exc, loop.time())
                raise

        return observe_middleware

    def _check_hook(self, app: web.Application) -> None:
        self._hook_checked = True
        if self.on_response_prepare not in app.on_response_prepare:
            log.warning(
                "Observability.setup(app) was not called: streamed responses aborted by the "
                "client will not be counted or logged"
            )

    @staticmethod
    def _record_abandoned(
        request: web.Request, state: _RequestState, exc: BaseException, now: float
    ) -> None:
        """Record a response aiohttp never logs: its body started, then the handler failed."""
        response = state.response
        if response is None or not response.prepared or response.body_length:
            return
        started_writing = bool(getattr(request.writer, "output_size", 0))
        if started_writing or isinstance(exc, asyncio.CancelledError):
            try:
                finish_request(
                    request,
                    response,
                    now - state.started,
                    client_left=is_client_disconnect(request, exc),
                )
            except Exception:
                log.exception("recording an aborted request failed")

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Remember the response being sent so an aborted stream can still be recorded."""
        state = _state(request)
        if state is not None:
            state.response = response

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, content_type = exposition(self.metrics, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz_handler(self, request: web.Request) -> web.Response:
        status, payload = self.health.report()
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
