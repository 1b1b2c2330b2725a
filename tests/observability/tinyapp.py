"""A tiny /v2-shaped aiohttp app and a loopback server for the auth and observability tests.

It stands in for the real registry app (built elsewhere): a few routes with the real patterns,
blob GETs served as a ``FileResponse`` (sendfile) or as a handler-streamed ``StreamResponse``
whose pace the test controls, so byte counting can be pinned exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from p2preg.registry.accesslog import ACCESS_LOGGER_NAME
from p2preg.registry.httpserver import RegistryRunner
from p2preg.registry.observability import AccessLogger, Observability
from p2preg.registry.requestkeys import SOURCE_KEY

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
DIGEST = "sha256:" + "ab" * 32


@dataclass
class StreamControl:
    """Drives the streamed blob handler: it sends ``first`` bytes, then waits for ``resume``."""

    first: bytes
    rest: bytes
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    request: web.Request | None = None
    error: BaseException | None = None


@dataclass
class TinyRegistry:
    blob_path: Path
    source: str = "local"
    stream: StreamControl | None = None
    sendfile_by_hand: bool = False  # like the real blob handler: loop.sendfile on a StreamResponse

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        request[SOURCE_KEY] = self.source
        if self.stream is not None:
            return await self._streamed_blob(request, self.stream)
        if self.sendfile_by_hand:
            return await self._sendfile_blob(request)
        return web.FileResponse(self.blob_path, headers=API_VERSION)

    async def _sendfile_blob(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=API_VERSION)
        size = self.blob_path.stat().st_size
        response.content_length = size
        await response.prepare(request)
        with self.blob_path.open("rb") as fobj:
            try:
                transport = request.transport
                assert transport is not None
                await asyncio.get_running_loop().sendfile(transport, fobj, 0, size)
            except NotImplementedError:  # uvloop: no loop.sendfile
                await response.write(fobj.read())
        await response.write_eof()
        return response

    async def _streamed_blob(
        self, request: web.Request, control: StreamControl
    ) -> web.StreamResponse:
        control.request = request
        response = web.StreamResponse(headers=API_VERSION)
        response.content_length = len(control.first) + len(control.rest)
        try:
            await response.prepare(request)
            await response.write(control.first)
            control.first_sent.set()
            await control.resume.wait()
            await response.write(control.rest)
            await response.write_eof()
            return response
        except BaseException as exc:
            control.error = exc
            raise
        finally:
            control.finished.set()

    async def put_manifest(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, headers=API_VERSION)

    async def start_upload(self, request: web.Request) -> web.Response:
        return web.Response(status=202, headers={**API_VERSION, "Location": "/v2/x/uploads/1"})

    async def delete_blob(self, request: web.Request) -> web.Response:
        return web.Response(status=202, headers=API_VERSION)

    def app(
        self, middlewares: Sequence[Middleware] = (), *, obs: Observability | None = None
    ) -> web.Application:
        """The app; with ``obs``, its middleware goes first and ``obs.setup(app)`` is done."""
        chain = [obs.middleware, *middlewares] if obs is not None else list(middlewares)
        app = web.Application(middlewares=chain)
        if obs is not None:
            obs.setup(app)
        app.router.add_get("/v2/", self.ping)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self.blob)
        app.router.add_delete("/v2/{name:.+}/blobs/{digest}", self.delete_blob)
        app.router.add_put("/v2/{name:.+}/manifests/{ref}", self.put_manifest)
        app.router.add_post("/v2/{name:.+}/blobs/uploads/", self.start_upload)
        return app


@asynccontextmanager
async def serving(app: web.Application, *, ssl_context: object = None) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port> with the p2preg access logger; yields the base URL."""
    runner = RegistryRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)  # type: ignore[arg-type]
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class AccessLines(logging.Handler):
    """Collects the structured access records emitted on ``p2preg.access``."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level=level)
        self.records: list[dict[str, object]] = []
        self.messages: list[str] = []
        self.levels: list[int] = []
        self._changed: asyncio.Event | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.access)  # type: ignore[attr-defined]
        self.messages.append(record.getMessage())
        self.levels.append(record.levelno)
        if self._changed is not None:
            self._changed.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, object]]:
        """Wait until ``count`` requests were recorded (the log runs after the response is sent)."""
        async with asyncio.timeout(timeout_s):
            while len(self.records) < count:
                self._changed = asyncio.Event()
                await self._changed.wait()
        return self.records


@contextmanager
def capture_access_lines(level: int = logging.INFO) -> Iterator[AccessLines]:
    """Collect the ``p2preg.access`` records at ``level`` and above for the block."""
    logger = logging.getLogger(ACCESS_LOGGER_NAME)
    handler = AccessLines(level)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
