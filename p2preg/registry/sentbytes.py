"""How many response body bytes a finished (or aborted) aiohttp response actually wrote.

Owns: ``BodyCounter`` (hooked on aiohttp's per-request writer: adds up body chunks that were
actually handed to the transport), ``body_bytes_sent`` and ``header_bytes``.

Why not ``StreamResponse.body_length``: it is the writer's output size *headers included*, it
stays 0 when the response never reached ``write_eof`` (client gone mid-body), and the writer adds
a chunk to its output size *before* finding the transport closed, so a failed write is counted.
``FileResponse`` (or a handler calling ``loop.sendfile`` itself) under the stdlib loop sends the
file with native sendfile, whose bytes bypass the writer entirely; under uvloop (no native
sendfile) the file goes through the writer. The rules in ``body_bytes_sent`` reconcile these cases;
``tests/observability/test_bytes_sent.py`` pins them under both event loops.

"Sent" means handed to the kernel: bytes still in a socket buffer when the peer resets the
connection are counted. A response aborted in the middle of a native sendfile (stdlib loop)
counts only what went through the writer, usually 0 body bytes (the loop does not report
partial progress); the node runs uvloop.
On an aiohttp without the writer hook (``on_body_write``, aiohttp >= 3.14) the count falls back
to the writer's output size minus the header size.

Must not import other p2preg modules.
"""

from __future__ import annotations

from aiohttp import web

_NO_BODY_STATUSES = frozenset({204, 304})


class BodyCounter:
    """Adds up body bytes the request's writer handed to the transport."""

    __slots__ = ("body_bytes", "hooked")

    def __init__(self) -> None:
        self.body_bytes = 0
        self.hooked = False

    def attach(self, request: web.BaseRequest) -> None:
        """Hook onto ``request.writer`` (a no-op on an aiohttp without ``on_body_write``)."""
        writer = request.writer
        if hasattr(writer, "on_body_write"):
            writer.on_body_write = self._on_body_write
            self.hooked = True

    def _on_body_write(self, body_size: int, output_size: int) -> None:
        self.body_bytes += body_size


def header_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The size of the status line and headers aiohttp wrote for ``response``."""
    version = request.version
    lines = [f"HTTP/{version.major}.{version.minor} {response.status} {response.reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in response.headers.items())
    lines.append("\r\n")
    return len("".join(lines).encode("utf-8"))


def _writer_total(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Bytes (headers included) that went through aiohttp's writer for this response."""
    if response.body_length:
        return response.body_length
    writer = request.writer if response.prepared else None
    return int(getattr(writer, "output_size", 0) or 0)


def body_bytes_sent(
    request: web.BaseRequest, response: web.StreamResponse, counter: BodyCounter | None = None
) -> tuple[int, bool]:
    """``(body bytes written, response completed)`` for a response aiohttp is done with.

    ``completed`` is False when the body stopped before ``write_eof`` (the client disconnected or
    the handler failed mid-stream). ``counter`` is the request's attached ``BodyCounter``.
    """
    completed = bool(response.body_length)
    if (
        request.method == "HEAD"
        or response.status in _NO_BODY_STATUSES
        or response.status < 200
        or not response.prepared
    ):
        return 0, completed
    if counter is not None and counter.hooked:
        body = counter.body_bytes
    else:
        body = max(0, _writer_total(request, response) - header_bytes(request, response))
    declared = response.content_length
    if declared is not None:
        if completed:
            # A response that reached write_eof sent its declared length; fewer counted bytes
            # mean they bypassed the writer (native sendfile, by FileResponse or a handler).
            body = declared
        body = min(body, declared)
    return body, completed
