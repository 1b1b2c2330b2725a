"""A client's view of a fill: the bytes of a blob still arriving, from any offset.

Owns: ``follow`` (an async iterator over ``[start, end)`` of a fill's growing file, reading
what the writer has already flushed and waiting for more) and ``FollowAborted``. The last byte of
the span is held back until the writer has committed (digest verified): a fill that turns out
wrong makes ``follow`` raise instead, so the HTTP layer aborts the response and no client ever
receives a complete body whose bytes do not match its digest. Must not import aiohttp.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from p2preg.fetch.singleflight import Fill

READ_CHUNK_BYTES = 1 << 20


class FollowAborted(Exception):
    """The fill failed while a client was following it; the response must be aborted."""


async def follow(
    fill: Fill, start: int = 0, end: int | None = None, *, hold_last_byte: bool = True
) -> AsyncIterator[bytes]:
    """Yield the bytes ``[start, end)`` of ``fill`` as they become available.

    ``end`` None means the whole blob (the end is known once the fill finishes).
    ``hold_last_byte=False`` is for a reader that verifies the digest itself (a peer resuming
    with ``Range``): it gets every byte as soon as it is on disk.
    """
    hold = 1 if hold_last_byte else 0
    writer = fill.writer
    try:
        reader = await asyncio.to_thread(writer.open_reader)
    except Exception as exc:
        raise FollowAborted(f"blob {fill.digest} fill failed") from exc
    fd = reader.fileno()
    pos = start
    try:
        while True:
            if writer.failed:
                raise FollowAborted(str(fill.error or f"blob {fill.digest} fill failed"))
            stop = end if end is not None else (writer.size if writer.done else None)
            if stop is not None and pos >= stop:
                return
            available = writer.size
            limit = available if writer.done else available - hold  # hold back the last byte
            if stop is not None:
                limit = min(limit, stop if writer.done else stop - hold)
            if pos < limit:
                count = min(limit - pos, READ_CHUNK_BYTES)
                data = await asyncio.to_thread(os.pread, fd, count, pos)
                if not data:
                    raise FollowAborted(f"blob {fill.digest} is shorter than announced")
                pos += len(data)
                yield data
                continue
            if writer.done:
                # Committed but shorter than ``end``: the caller announced too much.
                raise FollowAborted(f"blob {fill.digest} ended at byte {available}")
            await writer.wait_for(max(pos, available))
    finally:
        reader.close()
