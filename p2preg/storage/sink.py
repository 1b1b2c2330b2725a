"""Buffered, hashed appends to an open file, with the disk work done off the event loop.

Owns: ``HashingSink``. Small chunks are gathered in memory until ``flush_bytes`` (1 MiB) have
arrived; then worker threads hash and write the whole batch: two threads at once for a large
batch (one hashes, one ``writev``s the same buffers, so a batch costs the longer of the two, not
their sum), one call for a small one. At most one batch is in flight: while the threads work on
batch N the event loop keeps receiving batch N+1, and a writer that gets ahead waits for the batch
in flight (back-pressure, bounded memory of about two batches). ``hashlib``, ``os.write`` and
``os.writev`` release the GIL on large buffers, so all of this really runs in parallel.

Must not import aiohttp, sqlite3 or other p2preg packages; it knows nothing of digests or paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any

DEFAULT_FLUSH_BYTES = 1 << 20
_IOV_MAX = 1024  # Linux and the BSDs; writev refuses longer vectors


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (regular files may write partially)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def writev_all(fd: int, chunks: list[bytes]) -> None:
    """Append ``chunks`` in order with as few ``os.writev`` calls as possible (no joined copy)."""
    pending = [memoryview(c) for c in chunks if c]
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while written and pending:  # drop what went out; a partial write leaves a tail
            head = pending[0]
            if written >= len(head):
                written -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[written:]
                written = 0


#: Batches at least this big are hashed and written by two threads at once (below it the second
#: thread hand-off costs more than the overlap saves).
PARALLEL_MIN_BYTES = 256 << 10


def write_chunks(fd: int, chunks: list[bytes]) -> int:
    """Append ``chunks`` to ``fd`` where they are (no joined copy); returns the byte count."""
    if len(chunks) == 1:
        write_all(fd, chunks[0])
    elif chunks:
        writev_all(fd, chunks)
    return sum(len(c) for c in chunks)


def hash_chunks(hasher: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def hash_and_write(fd: int, hasher: hashlib._Hash, chunks: list[bytes]) -> int:
    """Hash then append ``chunks`` to ``fd``; runs in a worker thread. Returns the byte count.

    Each chunk is hashed and written where it is (``hashlib`` and ``writev`` release the GIL):
    joining them first would copy every byte once more.
    """
    hash_chunks(hasher, chunks)
    return write_chunks(fd, chunks)


def _both(write: asyncio.Future[int], hashed: asyncio.Future[None]) -> asyncio.Future[int]:
    """A future done once *both* threads are done (so the fd and hasher are free again).

    Its result is the write's byte count; its error the write's, else the hash's.
    """
    combined: asyncio.Future[int] = write.get_loop().create_future()

    def done(_: asyncio.Future[Any]) -> None:
        if not (write.done() and hashed.done()) or combined.done():
            return
        for part in (write, hashed):
            if part.cancelled():
                combined.cancel()
                return
            error = part.exception()
            if error is not None:
                combined.set_exception(error)
                return
        combined.set_result(write.result())

    write.add_done_callback(done)
    hashed.add_done_callback(done)
    return combined


async def settle(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done whatever happens; ignore its outcome; re-raise a cancel."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                break
            cancelled = True
        except Exception:
            break
    if not future.cancelled():
        future.exception()  # mark retrieved
    if cancelled:
        raise asyncio.CancelledError


class HashingSink:
    """Appends to ``fd`` while hashing with ``hasher``; ``written`` counts bytes in the file.

    ``on_flushed(written)`` is called on the event loop each time a batch reaches the file, so
    readers following the file can be woken. The sink never closes ``fd``; the owner does, after
    ``drain()``. Not safe for concurrent ``write`` calls from several tasks (one producer).
    """

    def __init__(
        self,
        fd: int,
        hasher: hashlib._Hash,
        *,
        written: int = 0,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        on_flushed: Callable[[int], None] | None = None,
    ) -> None:
        self.fd = fd
        self.hasher = hasher
        self.written = written
        self._flush_bytes = flush_bytes
        self._on_flushed = on_flushed
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._inflight: asyncio.Future[int] | None = None
        self._inflight_bytes = 0
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes accepted by ``write`` but not yet handed to a worker thread."""
        return self._buffered

    @property
    def total(self) -> int:
        """Every byte accepted so far: in the file, in flight, or buffered."""
        inflight = 0 if self._inflight is None else self._inflight_bytes
        return self.written + inflight + self._buffered

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Accept ``chunk``; start a thread write once a full batch is buffered."""
        if not chunk:
            return
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # the caller may reuse its buffer; we keep a reference
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self._flush_bytes:
            await self._start_flush()

    async def flush(self) -> None:
        """Push everything buffered into the file (not fsync'ed) and wait for it."""
        if self._buffered:
            await self._start_flush()
        await self.drain()

    async def drain(self) -> None:
        """Wait for the batch in flight, if any; re-raises its ``OSError``."""
        inflight = self._inflight
        if inflight is not None:
            try:
                await asyncio.shield(inflight)
            finally:
                if self._inflight is inflight and inflight.done():
                    self._inflight = None

    async def settle(self) -> None:
        """Wait for the batch in flight to end, ignoring its error, before the fd is closed.

        A cancellation arriving meanwhile is held back until the worker thread is finished with
        the fd, then re-raised: closing an fd a thread still writes to could hit a reused fd.
        """
        inflight = self._inflight
        if inflight is not None:
            await settle(inflight)
            if self._inflight is inflight:
                self._inflight = None

    def take_buffer(self) -> list[bytes]:
        """Hand the unflushed chunks to the caller (to write them in its own thread call).

        Only valid after ``drain()``; the caller must account for them (``advance``).
        """
        assert self._inflight is None, "drain() before take_buffer()"
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        return chunks

    def advance(self, nbytes: int) -> None:
        """Record ``nbytes`` written to the file by the owner (see ``take_buffer``)."""
        self.written += nbytes
        if self._on_flushed is not None:
            self._on_flushed(self.written)

    def close(self) -> None:
        """Refuse further batches: the owner is about to close ``fd`` (after ``settle()``)."""
        self.closed = True

    async def _start_flush(self) -> None:
        await self.drain()  # at most one batch in flight, and batches stay in order
        if self.closed:  # closed while we waited: the fd may already be gone (or reused)
            raise RuntimeError("write to a closed sink")
        chunks = self.take_buffer()
        nbytes = self._inflight_bytes = sum(len(c) for c in chunks)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int]
        if nbytes >= PARALLEL_MIN_BYTES:
            written = loop.run_in_executor(None, write_chunks, self.fd, chunks)
            hashed = loop.run_in_executor(None, hash_chunks, self.hasher, chunks)
            future = _both(written, hashed)
        else:
            future = written = loop.run_in_executor(None, hash_and_write, self.fd, self.hasher,
                                                    chunks)
        self._inflight = future
        # Readers may see the bytes as soon as they are in the file, hashed or not (the digest
        # is checked at the commit, before the last byte of any response is released).
        written.add_done_callback(self._flushed)

    def _flushed(self, future: asyncio.Future[int]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # drain() re-raises for the producer
        self.advance(future.result())
        self._inflight_bytes = 0  # now counted in ``written``
