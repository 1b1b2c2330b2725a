"""Serve a byte range of a committed file, or of a file still growing, without a thread per reader.

Owns: ``send_file_slice``, ``send_growing_file`` (a file still being written, range by range as it
grows), ``send_chunks``, and the send-progress timeout (``SEND_PROGRESS_TIMEOUT_KEY`` on the app,
``DEFAULT_SEND_PROGRESS_TIMEOUT_S`` otherwise).

How bytes go out (the same under uvloop and the stdlib loop; ``loop.sendfile`` is not used and no
thread waits for a reader, so no number of slow or stalled readers can exhaust a pool; uvloop
0.23 has no ``loop.sendfile`` at all, and the stdlib's has no progress timeout and copies on the
loop thread):

- Plain TCP: zero-copy ``os.sendfile`` on a non-blocking duplicate of the socket's descriptor,
  driven by the socket's writability (``loop.add_writer``): when the socket has room, one job on
  a small pool copies until it is full again (``EAGAIN``: at once, never a wait for the reader),
  then the loop watches it again (``SocketSender``). Only copies and page-cache misses run in the
  pool, off the loop thread and over the cores; a stalled reader holds a registration, not a
  thread. The duplicate descriptor means the transport closing its own can never make a copy
  write into a reused descriptor number. Nothing else writes to the connection while the body
  goes out (the headers are flushed first).
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
from concurrent.futures import ThreadPoolExecutor
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
_PUMP_BYTES = 16 << 20
"""At most this much is sent per copy job before the socket is watched again (fairness)."""
_COPY_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="p2preg-sendfile")
"""Runs non-blocking ``sendfile`` calls only (each ends when the socket is full): its size
bounds parallel copies, never the number of readers."""


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

    Driven by the socket's writability: the event loop watches the sender's own duplicate
    descriptor (``loop.add_writer``); when the socket has room, one job on the small
    ``_COPY_POOL`` calls ``os.sendfile`` until the socket is full again (``EAGAIN``, at once on a
    non-blocking socket) or ``_PUMP_BYTES`` went out, then the loop watches again. A full socket
    costs nothing but its registration: no thread ever waits for a reader, so no number of
    stalled readers can take the pool; the pool only spreads the copies (and page-cache misses)
    over the cores and off the loop thread. One timer checks progress. Any failure (the client
    went away, no byte taken within ``timeout_s``, cancellation) shuts the connection down, so
    the client sees a dropped connection, never a short complete body.
    """

    def __init__(self, out_fd: int, in_fd: int, timeout_s: float) -> None:
        self._out_fd = out_fd
        self._in_fd = in_fd
        self._timeout_s = timeout_s
        self._position = 0
        self._remaining = 0
        self._progress_at = 0.0
        self._done: asyncio.Future[None] | None = None
        self._copy: asyncio.Future[int] | None = None
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while buffered() > 0:  # headers are normally flushed at once; never send around them
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(self._out_fd, _resolve, ready)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise StalledReader(
                    f"client took no response header for {self._timeout_s:g} s") from None
            finally:
                loop.remove_writer(self._out_fd)
            await asyncio.sleep(_FLUSH_POLL_S)  # let the transport's own watcher write first

    async def send(self, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file from ``offset``; returns when all went out."""
        loop = asyncio.get_running_loop()
        self._position, self._remaining = offset, count
        self._progress_at = loop.time()
        done = self._done = loop.create_future()
        self._timer = loop.call_later(self._timeout_s, self._check_progress)
        self._start_copy()  # a fresh response: the socket has room
        try:
            await done
        except BaseException:
            _shutdown(self._out_fd)  # ends a copy in flight at once, and wakes the client
            raise
        finally:
            self._unwatch()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            copy = self._copy
            if copy is not None and not copy.done():  # never close the descriptor under it
                await asyncio.wait([copy])

    def _start_copy(self) -> None:
        """The socket has room: copy in a pool thread (the writability callback)."""
        done = self._done
        if done is None or done.done() or (self._copy is not None and not self._copy.done()):
            return
        self._unwatch()
        loop = asyncio.get_running_loop()
        copy = self._copy = loop.run_in_executor(
            _COPY_POOL, _copy_some, self._out_fd, self._in_fd, self._position,
            min(self._remaining, _PUMP_BYTES))
        copy.add_done_callback(self._copied)

    def _copied(self, copy: asyncio.Future[int]) -> None:
        done = self._done
        if done is None or done.done():
            return
        exc = copy.exception()
        if exc is not None:
            if isinstance(exc, ConnectionAbortedError):
                done.set_exception(exc)
            else:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                done.set_exception(ConnectionResetError(f"client went away: {reason}"))
            return
        sent = copy.result()
        if sent:
            self._position += sent
            self._remaining -= sent
            self._progress_at = asyncio.get_running_loop().time()
        if self._remaining == 0:
            done.set_result(None)
        else:
            self._watch()  # level-triggered: fires at once if the socket still has room

    def _watch(self) -> None:
        if not self._watching:
            asyncio.get_running_loop().add_writer(self._out_fd, self._start_copy)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_writer(self._out_fd)
            self._watching = False

    def _check_progress(self) -> None:
        done = self._done
        if done is None or done.done():
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._progress_at
        if idle >= self._timeout_s:
            done.set_exception(StalledReader(f"client accepted no bytes for {self._timeout_s:g} s"))
        else:
            self._timer = loop.call_later(self._timeout_s - idle, self._check_progress)

    def close(self) -> None:
        """Release the duplicate descriptor (after ``send`` returned or raised)."""
        out_fd, self._out_fd = self._out_fd, -1
        if out_fd >= 0:
            os.close(out_fd)


def _copy_some(out_fd: int, in_fd: int, position: int, limit: int) -> int:
    """Up to ``limit`` bytes with non-blocking ``sendfile`` until the socket is full (a pool
    thread: never waits for the reader). Returns the bytes sent; raises on a broken socket."""
    sent_total = 0
    while sent_total < limit:
        try:
            sent = os.sendfile(out_fd, in_fd, position + sent_total, limit - sent_total)
        except (BlockingIOError, InterruptedError):
            break
        if sent == 0:
            raise ConnectionAbortedError("file shorter than its recorded size")
        sent_total += sent
    return sent_total


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
