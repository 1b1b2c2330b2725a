"""Serve a byte range of a committed file, or of a file still growing, without a thread per reader.

Owns: ``send_file_slice``, ``send_growing_file`` (a file still being written, range by range as it
grows), ``send_chunks``, and the send-progress timeout (``SEND_PROGRESS_TIMEOUT_KEY`` on the app,
``DEFAULT_SEND_PROGRESS_TIMEOUT_S`` otherwise).

How bytes go out (the same under uvloop and the stdlib loop; neither ``loop.sendfile`` nor a
worker thread is used, so no number of slow or stalled readers can exhaust a pool):

- Plain TCP: zero-copy ``os.sendfile`` on a non-blocking duplicate of the socket's descriptor,
  on the event loop, driven by the socket's writability (``loop.add_writer``). Each call moves at
  most what the socket buffer takes, then the sender waits for room. The duplicate means the
  transport closing its own descriptor can never make us write into a reused descriptor number.
  Nothing else writes to the connection while the body goes out (the headers are flushed first).
- TLS (no raw socket): chunks of ``CHUNK_BYTES`` read in a worker thread (one bounded read at a
  time, never a wait on the client there) and written through the transport.

A reader that accepts no byte for the send-progress timeout is dropped (the connection is reset,
``StalledReader``), and so is a reader that vanishes. The caller opens the file *before* any
header is sent, so a file that vanished is still an ordinary error response; once headers are out,
a failure propagates and the connection is dropped (a client never sees a short "complete"
response).

Must not import storage, fetch or handlers (``content`` only for type checking).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from p2preg.registry.content import GrowingFile

CHUNK_BYTES = 1 << 20
DEFAULT_SEND_PROGRESS_TIMEOUT_S = 60.0
SEND_PROGRESS_TIMEOUT_KEY = web.AppKey("send_progress_timeout_s", float)
"""Seconds a reader may accept no byte before it is dropped (set on the app; default above)."""
_MAX_SENDFILE_BYTES = 1 << 30
_FLUSH_POLL_S = 0.002


class StalledReader(ConnectionResetError):
    """The reader accepted no byte within the send-progress timeout (a client fault, like a
    client that went away: the connection is reset)."""


def progress_timeout(request: web.Request) -> float:
    """The send-progress timeout configured for ``request``'s application."""
    return float(request.config_dict.get(SEND_PROGRESS_TIMEOUT_KEY,
                                         DEFAULT_SEND_PROGRESS_TIMEOUT_S))


class _Sender(Protocol):
    async def send(self, offset: int, count: int) -> None: ...

    def close(self) -> None: ...


async def send_file_slice(
    request: web.Request,
    response: web.StreamResponse,
    fobj: BinaryIO,
    offset: int,
    count: int,
) -> web.StreamResponse:
    """Prepare ``response``, send ``count`` bytes of ``fobj`` from ``offset``, close ``fobj``."""
    sender: _Sender | None = None
    try:
        response.content_length = count
        writer = await response.prepare(request)
        if request.method == "HEAD" or count == 0 or writer is None:
            await response.write_eof()
            return response
        sender = await _open_sender(request, response, fobj)
        await sender.send(offset, count)
        await response.write_eof()
        return response
    finally:
        if sender is not None:
            sender.close()
        fobj.close()


async def send_growing_file(
    request: web.Request,
    response: web.StreamResponse,
    growing: GrowingFile,
    count: int,
) -> web.StreamResponse:
    """Prepare ``response`` and send exactly ``count`` bytes of a file that is still growing.

    The file is opened before any header goes out (a fill that already failed is an ordinary
    error response), on the event loop: it is a local file the node has just created, and a
    worker-thread hop here costs more time to first byte than the ``open`` itself. Each range
    ``growing.ranges()`` releases is sent as ``send_file_slice`` sends a committed file. A failure
    of the ranges, or a total other than ``count``, aborts the connection.
    """
    fobj = growing.open_file()
    ranges = growing.ranges()
    sender: _Sender | None = None
    try:
        response.content_length = count
        writer = await response.prepare(request)
        if writer is None or request.transport is None:
            raise ConnectionResetError("client went away")
        sent = 0
        async for offset, length in ranges:
            sent += length
            if sent > count:
                raise ConnectionAbortedError("content source sent more bytes than promised")
            if sender is None:
                sender = await _open_sender(request, response, fobj)
            await sender.send(offset, length)
        if sent != count:
            raise ConnectionAbortedError("content source ended early")
        await response.write_eof()
        return response
    finally:
        if sender is not None:
            sender.close()
        close = getattr(ranges, "aclose", None)
        if close is not None:
            await close()
        fobj.close()


async def send_chunks(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    count: int,
) -> web.StreamResponse:
    """Prepare ``response`` and stream exactly ``count`` bytes from ``chunks``.

    A source that yields more or fewer bytes than promised, or raises, aborts the connection, and
    so does a reader that takes no byte within the send-progress timeout; ``chunks`` is closed
    (``aclose``) in every case, also when the client goes away.
    """
    try:
        response.content_length = count
        await response.prepare(request)
        timeout = progress_timeout(request)
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > count:
                raise ConnectionAbortedError("content source sent more bytes than promised")
            await _write_with_progress(request.transport, response.write(chunk), timeout)
        if sent != count:
            raise ConnectionAbortedError("content source ended early")
        await response.write_eof()
        return response
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _open_sender(
    request: web.Request, response: web.StreamResponse, fobj: BinaryIO
) -> _Sender:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    timeout = progress_timeout(request)
    if _raw_socket(transport) is not None:
        return await SocketSender.open(transport, fobj, timeout)
    return _ChunkSender(transport, response, fobj, timeout)


def _raw_socket(transport: asyncio.BaseTransport) -> Any:
    """The transport's socket when bytes written to it reach the client as they are (no TLS)."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return None
    return sock


class SocketSender:
    """Non-blocking ``os.sendfile`` of ranges of one file to one plain-TCP connection.

    Runs on the event loop: ``send`` calls ``os.sendfile`` while the socket takes bytes and
    otherwise waits for writability with ``loop.add_writer`` on its own duplicate descriptor.
    Any failure (the client went away, no progress within ``timeout_s``, cancellation) shuts the
    connection down, so the client sees a dropped connection, never a short complete body.
    """

    def __init__(self, out_fd: int, in_fd: int, timeout_s: float) -> None:
        self._out_fd = out_fd
        self._in_fd = in_fd
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, transport: asyncio.BaseTransport, fobj: BinaryIO, timeout_s: float
    ) -> SocketSender:
        """Wait until the transport flushed what it holds (the headers), then take over."""
        sock = _raw_socket(transport)
        if sock is None:
            raise ConnectionResetError("client went away")
        sender = cls(os.dup(sock.fileno()), fobj.fileno(), timeout_s)
        try:
            await sender._flush(transport)
        except BaseException:
            sender.close()
            raise
        return sender

    async def _flush(self, transport: asyncio.BaseTransport) -> None:
        buffered = transport.get_write_buffer_size  # type: ignore[attr-defined]  # uvloop's is no WriteTransport subclass
        while buffered() > 0:  # headers are normally flushed at once; never send around them
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            await self._writable()
            await asyncio.sleep(_FLUSH_POLL_S)  # let the transport's own watcher write first

    async def send(self, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file from ``offset``; returns when all went out."""
        try:
            await self._send(offset, count)
        except BaseException:
            _shutdown(self._out_fd)
            raise

    async def _send(self, offset: int, count: int) -> None:
        position, remaining = offset, count
        while remaining > 0:
            try:
                sent = os.sendfile(self._out_fd, self._in_fd, position,
                                   min(remaining, _MAX_SENDFILE_BYTES))
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise ConnectionResetError(f"client went away: {exc.strerror}") from exc
            if sent == 0:
                raise ConnectionAbortedError("file shorter than its recorded size")
            position += sent
            remaining -= sent
            if remaining > 0:
                await asyncio.sleep(0)  # a fast reader must not starve the other connections

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(self._out_fd, wake)
        try:
            await asyncio.wait_for(ready, self._timeout_s)
        except TimeoutError:
            raise StalledReader(
                f"client accepted no bytes for {self._timeout_s:g} s"
            ) from None
        finally:
            loop.remove_writer(self._out_fd)

    def close(self) -> None:
        """Release the duplicate descriptor."""
        out_fd, self._out_fd = self._out_fd, -1
        if out_fd >= 0:
            os.close(out_fd)


class _ChunkSender:
    """Chunks read in a worker thread (one bounded read at a time) and written to the transport;
    for connections without a raw socket (TLS)."""

    def __init__(self, transport: asyncio.BaseTransport, response: web.StreamResponse,
                 fobj: BinaryIO, timeout_s: float) -> None:
        self._transport = transport
        self._response = response
        self._fobj = fobj
        self._timeout_s = timeout_s

    async def send(self, offset: int, count: int) -> None:
        fobj = self._fobj

        def read(size: int, position: int) -> bytes:
            return os.pread(fobj.fileno(), size, position)

        position = offset
        while count > 0:
            chunk = await asyncio.to_thread(read, min(CHUNK_BYTES, count), position)
            if not chunk:
                raise ConnectionAbortedError("file shorter than its recorded size")
            await _write_with_progress(self._transport, self._response.write(chunk),
                                       self._timeout_s)
            position += len(chunk)
            count -= len(chunk)

    def close(self) -> None:
        pass


async def _write_with_progress(
    transport: asyncio.BaseTransport | None, write: Awaitable[None], timeout_s: float
) -> None:
    """Await ``write`` (which drains the transport) while the reader keeps taking bytes: each
    ``timeout_s`` without the transport's buffer shrinking drops the reader."""
    task = asyncio.ensure_future(write)
    size = getattr(transport, "get_write_buffer_size", None)
    last = size() if size is not None else 0
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if done:
                task.result()
                return
            now = size() if size is not None else last
            if now >= last:
                raise StalledReader(f"client accepted no bytes for {timeout_s:g} s")
            last = now
    except BaseException:
        task.cancel()
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _shutdown(sock.fileno())  # a reset: the unread bytes must not linger
            transport.abort()  # type: ignore[attr-defined]
        raise


def _shutdown(fd: int) -> None:
    """End the connection now: a reset on close (``SO_LINGER`` 0, so bytes the reader never took
    do not linger in the kernel) and a shutdown that wakes every waiter on the socket."""
    if fd < 0:
        return
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()
