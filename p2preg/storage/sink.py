"""Buffered, hashed appends to an open file, with the disk work done off the event loop.

Owns: ``HashingSink``. Small chunks are gathered in memory until ``flush_bytes`` (1 MiB) have
arrived; then worker threads hash and write the whole batch: one thread hashes while another
``writev``s the same buffers, and each batch's write waits only for the previous batch's write,
its hash only for the previous hash (one fd, one hasher: order kept), so batch N+1 can be written
while batch N is still hashed. Up to ``MAX_BATCHES_IN_FLIGHT`` (2) batches are in flight while
the event loop receives the next one; a writer that gets further ahead waits for the oldest
(back-pressure, bounded memory of about three batches). The first batch of a small write goes
in one call (hash then write). ``hashlib``, ``os.write`` and ``os.writev`` release the GIL on
large buffers, so all of this really runs in parallel.

Must not import aiohttp, sqlite3 or other p2preg packages; it knows nothing of digests or paths.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any, cast

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
#: Batches hashed and written at once (each waits for its predecessor's write and hash only):
#: with 2, batch N+1 is written while batch N is still being hashed. Memory: this many batches
#: plus the one being filled.
MAX_BATCHES_IN_FLIGHT = 2


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
        self._inflight_bytes = 0
        # Batches in flight, oldest first: (write done, hash done, bytes). Writes run one after
        # the other (one fd), hashes too (one hasher), but a batch's write need not wait for the
        # previous batch's hash: up to MAX_BATCHES_IN_FLIGHT batches overlap.
        self._batches: list[tuple[asyncio.Future[int], asyncio.Future[None], int]] = []
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes accepted by ``write`` but not yet handed to a worker thread."""
        return self._buffered

    @property
    def total(self) -> int:
        """Every byte accepted so far: in the file, in flight, or buffered."""
        return self.written + self._inflight_bytes + self._buffered

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
        """Wait for every batch in flight; re-raises the first ``OSError``."""
        await self._wait_batches(0)

    async def settle(self) -> None:
        """Wait for every batch in flight to end, ignoring errors, before the fd is closed.

        A cancellation arriving meanwhile is held back until the worker threads are finished
        with the fd, then re-raised: closing an fd a thread still writes to could hit a reused fd.
        """
        cancelled = False
        for written, hashed, _ in list(self._batches):
            for part in (written, hashed):
                try:
                    await settle(part)
                except asyncio.CancelledError:
                    cancelled = True
        self._batches.clear()
        if cancelled:
            raise asyncio.CancelledError

    async def _wait_batches(self, keep: int) -> None:
        """Wait until at most ``keep`` batches are in flight (oldest first); raise an error."""
        while len(self._batches) > keep:
            written, hashed, _ = self._batches[0]
            parts: list[asyncio.Future[Any]] = [written, hashed]
            # Both threads let go of the fd and hasher before an error is raised.
            await asyncio.wait(parts)
            self._batches.pop(0)
            for part in parts:
                error = None if part.cancelled() else part.exception()
                if error is not None:
                    for later_written, later_hashed, _ in self._batches:  # chained: they fail
                        await asyncio.wait([later_written, cast("asyncio.Future[Any]",
                                                                later_hashed)])
                    self._batches.clear()
                    raise error

    def take_buffer(self) -> list[bytes]:
        """Hand the unflushed chunks to the caller (to write them in its own thread call).

        Only valid after ``drain()``; the caller must account for them (``advance``).
        """
        assert not self._batches, "drain() before take_buffer()"
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
        # Bounded memory: at most MAX_BATCHES_IN_FLIGHT batches besides the one buffering.
        await self._wait_batches(MAX_BATCHES_IN_FLIGHT - 1)
        if self.closed:  # closed while we waited: the fd may already be gone (or reused)
            raise RuntimeError("write to a closed sink")
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        nbytes = sum(len(c) for c in chunks)
        self._inflight_bytes += nbytes
        previous = self._batches[-1] if self._batches else None
        written: asyncio.Future[int]
        hashed: asyncio.Future[None]
        if nbytes >= PARALLEL_MIN_BYTES or previous is not None:
            written = asyncio.ensure_future(self._after(
                None if previous is None else previous[0], write_chunks, self.fd, chunks))
            hashed = asyncio.ensure_future(self._after(
                None if previous is None else previous[1], hash_chunks, self.hasher, chunks))
        else:
            loop = asyncio.get_running_loop()
            written = loop.run_in_executor(None, hash_and_write, self.fd, self.hasher, chunks)
            hashed = loop.create_future()
            written.add_done_callback(lambda _f: hashed.set_result(None))
        self._batches.append((written, hashed, nbytes))
        # Readers may see the bytes as soon as they are in the file, hashed or not (the digest
        # is checked at the commit, before the last byte of any response is released).
        written.add_done_callback(functools.partial(self._flushed, nbytes=nbytes))

    @staticmethod
    async def _after(previous: asyncio.Future[Any] | None, work: Callable[..., Any],
                     *args: Any) -> Any:
        """Run ``work(*args)`` in a worker thread once ``previous`` (same kind) succeeded."""
        if previous is not None:
            await asyncio.shield(previous)  # its error stops this batch too
        return await asyncio.get_running_loop().run_in_executor(None, work, *args)

    def _flushed(self, future: asyncio.Future[int], *, nbytes: int) -> None:
        self._inflight_bytes -= nbytes
        if future.cancelled() or future.exception() is not None:
            return  # drain() re-raises for the producer
        self.advance(future.result())
