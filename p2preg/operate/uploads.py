"""Blob uploads to peers in progress, for the status page: ``UploadTracker``.

Owns ``UploadTracker`` (an aiohttp middleware for the app serving ``/p2p``: every
``GET /p2p/v1/blobs/<digest>`` is listed from its arrival until its handler returns, with the
asking peer's name, its start and the body bytes written so far) and ``Upload``. Bytes are read
from aiohttp's body-write hook, chained after the one the metrics already use (nothing else is
changed); a body sent with the kernel's sendfile under the stdlib event loop bypasses the hook,
so there the count stays 0 until the end (the node runs uvloop, where it counts).

Must not import the p2p server or the registry handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from p2preg.clock import Clock
from p2preg.p2p.auth import NODE_HEADER

BLOBS_PREFIX = "/p2p/v1/blobs/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upload:
    digest: str
    peer: str
    started: float
    sent: int = 0

    def to_json(self, now: float) -> dict[str, Any]:
        return {"digest": self.digest, "peer": self.peer, "sent": self.sent,
                "seconds": round(max(0.0, now - self.started), 3)}


class UploadTracker:
    """The uploads to peers running now (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._active: dict[int, Upload] = {}

    def active(self) -> list[dict[str, Any]]:
        now = self._clock.now()
        return [u.to_json(now) for u in sorted(self._active.values(), key=lambda u: u.started)]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "GET" or not request.path.startswith(BLOBS_PREFIX):
            return await handler(request)
        upload = Upload(request.path[len(BLOBS_PREFIX):][:80],
                        request.headers.get(NODE_HEADER, "")[:64], self._clock.now())
        writer: Any = request.writer
        if hasattr(writer, "on_body_write"):
            previous = writer.on_body_write

            def count(body_size: int, output_size: int) -> None:
                upload.sent += body_size
                if previous is not None:
                    previous(body_size, output_size)

            writer.on_body_write = count
        self._active[id(upload)] = upload
        try:
            return await handler(request)
        finally:
            self._active.pop(id(upload), None)
