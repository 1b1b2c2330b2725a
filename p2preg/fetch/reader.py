"""A client's view of a fill: the bytes of a blob still arriving, from any offset.

Owns: ``FollowedSpan`` (the bytes ``[start, end)`` of a fill's growing file, as the file to read
and the ranges of it that may be sent so far: a server sends those ranges with ``sendfile``
straight from the file), ``follow`` (the same bytes as an async iterator of chunks read into
memory) and ``FollowAborted``.

The last byte of the span is held back until the writer has verified the digest: a fill that
turns out wrong makes the ranges raise instead, so the HTTP layer aborts the response and no
client ever receives a complete body whose bytes do not match its digest. For a blob of at least
``EARLY_RELEASE_MIN_BYTES`` the last byte goes out as soon as the digest matched, without waiting
for the fsync and rename that make the local copy durable (about 2 s per GiB of fsync here); a
smaller blob waits for the commit, which then costs milliseconds, so a completed response also
means the blob is in the store. Must not import aiohttp.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from p2preg.fetch.singleflight import Fill
from p2preg.oci.errors import ErrorCode, RegistryError

READ_CHUNK_BYTES = 1 << 20

#: Blobs at least this big release their last byte once verified, before the commit's fsync.
EARLY_RELEASE_MIN_BYTES = 4 << 20


class FollowAborted(Exception):
    """The fill failed while a client was following it; the response must be aborted."""


class FollowedSpan:
    """The bytes ``[start, end)`` of ``fill`` (``end`` None: to the blob's end, known once the
    fill is verified), sendable range by range as they reach the file.

    ``hold_last_byte=False`` is for a reader that verifies the digest itself (a peer resuming
    with ``Range``): it gets every byte as soon as it is in the file. ``early_release_min_bytes``:
    see the module docstring.
    """

    def __init__(
        self,
        fill: Fill,
        start: int = 0,
        end: int | None = None,
        *,
        hold_last_byte: bool = True,
        early_release_min_bytes: int = EARLY_RELEASE_MIN_BYTES,
    ) -> None:
        self.fill = fill
        self.start = start
        self.end = end
        self._hold = 1 if hold_last_byte else 0
        self._early_release_min_bytes = early_release_min_bytes

    def _complete(self) -> bool:
        """True once the blob's bytes are final and may all be released."""
        writer = self.fill.writer
        if writer.done:
            return True
        return writer.verified and writer.size >= self._early_release_min_bytes

    def open_file(self) -> BinaryIO:
        """Open the fill's file (blocking: call it in a worker thread).

        The file stays readable when the commit renames or the fill removes it. Raises
        ``BLOB_UNKNOWN`` when the fill already failed.
        """
        writer = self.fill.writer
        if writer.failed and not writer.verified:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"the fill of blob {self.fill.digest} "
                                f"failed", {"digest": str(self.fill.digest)})
        return writer.open_reader()

    async def ranges(self) -> AsyncIterator[tuple[int, int]]:
        """Yield ``(offset, count)`` of the file, in order and contiguous, as bytes become
        sendable; every wake-up of the writer yields at most one range (all that is there).

        Raises ``FollowAborted`` when the fill fails before the span's last byte is released,
        or when the blob turns out shorter than ``end``.
        """
        fill, writer, hold = self.fill, self.fill.writer, self._hold
        pos, end = self.start, self.end
        while True:
            complete = self._complete()
            if writer.failed and not complete:
                raise FollowAborted(str(fill.error or f"blob {fill.digest} fill failed"))
            stop = end if end is not None else (writer.size if complete else None)
            if stop is not None and pos >= stop:
                return
            available = writer.size
            limit = available if complete else available - hold  # hold back the last byte
            if stop is not None:
                limit = min(limit, stop if complete else stop - hold)
            if pos < limit:
                yield pos, limit - pos
                pos = limit
                continue
            if complete:
                # Verified but shorter than ``end``: the caller announced too much.
                raise FollowAborted(f"blob {fill.digest} ended at byte {available}")
            if writer.verified:
                await writer.wait_for(max(pos, available))  # a small blob: until committed
            else:
                await writer.wait_for_final(max(pos, available))

    async def chunks(self) -> AsyncIterator[bytes]:
        """The span's bytes read into memory, at most ``READ_CHUNK_BYTES`` at a time."""
        try:
            reader = await asyncio.to_thread(self.open_file)
        except RegistryError as exc:
            raise FollowAborted(f"blob {self.fill.digest} fill failed") from exc
        fd = reader.fileno()
        try:
            async for offset, count in self.ranges():
                stop = offset + count
                while offset < stop:
                    data = await asyncio.to_thread(
                        os.pread, fd, min(stop - offset, READ_CHUNK_BYTES), offset
                    )
                    if not data:
                        raise FollowAborted(f"blob {self.fill.digest} is shorter than announced")
                    offset += len(data)
                    yield data
        finally:
            reader.close()


def follow(
    fill: Fill, start: int = 0, end: int | None = None, *, hold_last_byte: bool = True
) -> AsyncIterator[bytes]:
    """Yield the bytes ``[start, end)`` of ``fill`` as they become available (see
    ``FollowedSpan``; ``end`` None means the whole blob)."""
    return FollowedSpan(fill, start, end, hold_last_byte=hold_last_byte).chunks()
