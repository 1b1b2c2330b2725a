"""Serve a byte range of a committed file: ``loop.sendfile`` when the loop has it, else chunks.

Owns: ``send_file_slice``, ``send_growing_file`` (a file still being written, range by range as it
grows) and ``send_chunks``. The caller opens the file *before* any header is
sent, so a file that vanished is still an ordinary error response; once headers are out, a failure
propagates and the connection is dropped (a client never sees a short "complete" response).
uvloop has no ``loop.sendfile``: there a plain-TCP response is sent zero-copy by ``os.sendfile``
in a dedicated worker thread (``_sendfile_thread``) on a duplicate of the socket's descriptor, while
the transport's own buffer is empty and nothing else writes to the connection; TLS connections
(and anything else without a raw socket) go through worker-thread reads of ``CHUNK_BYTES``.
Must not import storage, fetch or handlers (``content`` only for type checking).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from aiohttp import web

if TYPE_CHECKING:
    from p2preg.registry.content import GrowingFile

CHUNK_BYTES = 1 << 20
SENDFILE_IDLE_TIMEOUT_S = 60.0
"""A client that accepts no byte for this long is dropped (the thread must not wait forever)."""
_POLL_SLICE_MS = 500
# Threads that mostly sit in poll(); kept apart from the default executor (storage writes use it).
_SENDFILE_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="p2preg-sendfile")


async def send_file_slice(
    request: web.Request,
    response: web.StreamResponse,
    fobj: BinaryIO,
    offset: int,
    count: int,
) -> web.StreamResponse:
    """Prepare ``response``, send ``count`` bytes of ``fobj`` from ``offset``, close ``fobj``."""
    try:
        response.content_length = count
        writer = await response.prepare(request)
        if request.method == "HEAD" or count == 0 or writer is None:
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        try:
            await writer.drain()
            await loop.sendfile(transport, fobj, offset, count)
        except NotImplementedError:
            if _raw_socket(transport) is not None:
                await _sendfile_thread(transport, fobj, offset, count)
            else:
                await _copy_chunks(response, fobj, offset, count)
        await response.write_eof()
        return response
    finally:
        fobj.close()


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


async def _sendfile_thread(
    transport: asyncio.BaseTransport, fobj: BinaryIO, offset: int, count: int
) -> None:
    """Send ``count`` bytes of ``fobj`` from ``offset`` with ``os.sendfile`` in a worker thread."""
    sender = await _ThreadSender.open(transport, fobj)
    try:
        await sender.send(offset, count)
    finally:
        sender.close()


class _ThreadSender:
    """``os.sendfile`` of ranges of one file to one plain-TCP connection, in worker threads.

    The threads work on a ``dup`` of the socket descriptor, so the transport closing its own
    descriptor can never make a thread write into a reused descriptor number; cancelling a
    ``send`` (the client went away, shutdown) shuts the connection down, which ends the thread's
    sendfile at once. Nothing else may write to the connection until ``close``.
    """

    def __init__(self, out_fd: int, in_fd: int) -> None:
        self._out_fd = out_fd
        self._in_fd = in_fd
        self._busy: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, transport: asyncio.BaseTransport, fobj: BinaryIO) -> _ThreadSender:
        """Wait until the transport flushed what it holds (the headers), then take over."""
        buffered = transport.get_write_buffer_size  # type: ignore[attr-defined]  # uvloop's is no WriteTransport subclass
        for _ in range(1000):  # headers are normally flushed at once; never send around them
            if buffered() == 0:
                break
            await asyncio.sleep(0.001)
        else:
            raise ConnectionAbortedError("client is not reading the response headers")
        sock = _raw_socket(transport)
        if sock is None:
            raise ConnectionResetError("client went away")
        return cls(os.dup(sock.fileno()), fobj.fileno())

    async def send(self, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file from ``offset``; returns when all went out."""
        out_fd, in_fd = self._out_fd, self._in_fd
        stop = threading.Event()

        def run() -> None:
            poller = select.poll()
            poller.register(out_fd, select.POLLOUT)
            position, remaining, idle_ms = offset, count, 0.0
            while remaining > 0:
                if stop.is_set():
                    raise ConnectionAbortedError("response cancelled")
                try:
                    sent = os.sendfile(out_fd, in_fd, position, min(remaining, 1 << 30))
                except BlockingIOError:
                    events = poller.poll(_POLL_SLICE_MS)
                    if not events:
                        idle_ms += _POLL_SLICE_MS
                        if idle_ms >= SENDFILE_IDLE_TIMEOUT_S * 1000:
                            raise TimeoutError("client accepted no bytes in time") from None
                    elif events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        raise ConnectionResetError("client went away") from None
                    continue
                if sent == 0:
                    raise ConnectionAbortedError("file shorter than its recorded size")
                idle_ms = 0.0
                position += sent
                remaining -= sent

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_SENDFILE_POOL, run)
        self._busy = future
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            _shutdown(out_fd)
            await asyncio.wait([future])
            raise

    def close(self) -> None:
        """Release the descriptor (once the last thread stopped, after a second cancellation)."""
        out_fd, self._out_fd = self._out_fd, -1
        if out_fd < 0:
            return
        busy = self._busy
        if busy is None or busy.done():
            os.close(out_fd)
        else:
            busy.add_done_callback(lambda _f: os.close(out_fd))


def _shutdown(fd: int) -> None:
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


async def _copy_chunks(
    response: web.StreamResponse, fobj: BinaryIO, offset: int, count: int
) -> None:
    def read(size: int, position: int | None) -> bytes:
        if position is not None:
            fobj.seek(position)
        return fobj.read(size)

    position: int | None = offset
    while count > 0:
        chunk = await asyncio.to_thread(read, min(CHUNK_BYTES, count), position)
        position = None
        if not chunk:
            raise ConnectionAbortedError("file shorter than its recorded size")
        await response.write(chunk)
        count -= len(chunk)


async def send_chunks(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    count: int,
) -> web.StreamResponse:
    """Prepare ``response`` and stream exactly ``count`` bytes from ``chunks``.

    A source that yields more or fewer bytes than promised, or raises, aborts the connection;
    ``chunks`` is closed (``aclose``) in every case, also when the client goes away.
    """
    try:
        response.content_length = count
        await response.prepare(request)
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > count:
                raise ConnectionAbortedError("content source sent more bytes than promised")
            await response.write(chunk)
        if sent != count:
            raise ConnectionAbortedError("content source ended early")
        await response.write_eof()
        return response
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def send_growing_file(
    request: web.Request,
    response: web.StreamResponse,
    growing: GrowingFile,
    count: int,
) -> web.StreamResponse:
    """Prepare ``response`` and send exactly ``count`` bytes of a file that is still growing.

    The file is opened before any header goes out (a fill that already failed is an ordinary
    error response), on the event loop: it is a local file the node has just created, and a
    worker-thread hop here costs more time to first byte (GIL hand-offs while the fill's own
    threads hash and write) than the ``open`` itself. Each range ``growing.ranges()`` releases
    is sent as ``send_file_slice`` sends a committed file: ``loop.sendfile``, else
    ``os.sendfile`` in a worker thread (uvloop, plain TCP), else chunks read in a thread (TLS).
    A failure of the ranges, or a total other than ``count``, aborts the connection.
    """
    fobj = growing.open_file()
    ranges = growing.ranges()
    sender: _ThreadSender | None = None
    try:
        response.content_length = count
        writer = await response.prepare(request)
        transport = request.transport
        if writer is None or transport is None:
            raise ConnectionResetError("client went away")
        loop = asyncio.get_running_loop()
        native = True
        sent = 0
        async for offset, length in ranges:
            sent += length
            if sent > count:
                raise ConnectionAbortedError("content source sent more bytes than promised")
            if sender is not None:
                await sender.send(offset, length)
                continue
            if native:
                try:
                    await writer.drain()
                    await loop.sendfile(transport, fobj, offset, length)
                    continue
                except NotImplementedError:
                    native = False
            if _raw_socket(transport) is not None:
                sender = await _ThreadSender.open(transport, fobj)
                await sender.send(offset, length)
            else:
                await _copy_chunks(response, fobj, offset, length)
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
