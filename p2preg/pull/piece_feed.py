"""``PieceFeed``: the bytes of one piece while they arrive from a peer, so this node can pass
them on at once ("cut-through") instead of answering ``404`` until the piece is whole.

Owns: ``PieceFeed`` (one piece request's bytes so far, its source and its end) and the rules a
reader of it follows:

- ``add(chunk)`` appends bytes as they arrive; ``finish(ok)`` ends the feed (``ok``: the piece
  arrived whole; else its request failed, stalled or was cancelled).
- ``follow(offset, end)`` yields bytes ``[offset, end)`` (absolute offsets in the blob, inside
  ``[start, end_of_piece)``) as they arrive. A failed feed, or no new byte for ``stall_s``,
  raises ``ConnectionAbortedError``: the reader aborts its answer, so its requester never takes
  a short piece for a whole one (and re-asks elsewhere).
- ``first_byte(timeout)``: whether at least one byte arrived (waiting at most ``timeout``).
  A feed exists from the moment its request is sent (before any answer), so a peer that was
  hinted this node for the piece waits for it instead of being told ``404``.

Why this cannot make waits cycle (the server's rules, ``p2p.server``): a node serves a feed
only to a requester that is not the feed's ``source``, and only once a byte has arrived
(bounded wait). Bytes only enter a feed from its source, so a chain of feeds that delivers
bytes ends at a node that has the piece; a cycle of nodes each waiting for the next has no
byte to start with, and every wait in it ends after ``first_byte``'s timeout. A feed whose
source is the digest's owner (``from_root``) may be waited on longer: the owner is fed by the
upstream and never waits on a peer, so such a wait is no link of a cycle.

Must not import the server, the registry package, storage or gossip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

#: A reader gives up when no byte arrived for this long (the fill's own stall timer is 3 s).
FEED_STALL_S = 5.0


class PieceFeed:
    """Bytes ``[start, end)`` of a blob arriving from ``source`` (module docstring)."""

    def __init__(self, source: str, start: int, end: int, *, from_root: bool = False,
                 stall_s: float = FEED_STALL_S) -> None:
        if not 0 <= start <= end:
            raise ValueError(f"bad span {start}-{end}")
        self.source = source
        #: the source is the digest's root (its owner): it never waits on another peer
        self.from_root = from_root
        self.start = start
        self.end = end
        self.stall_s = stall_s
        self.parts: list[bytes] = []
        self.got = 0
        self.done = False
        self.failed = False
        self._whole: bytes | None = None
        self._changed = asyncio.Event()
        self._waiting = 0  # readers parked on _changed: no wake-up to pay for when none is

    def add(self, chunk: bytes) -> None:
        if self.done or self.failed or not chunk:
            return
        if self.got + len(chunk) > self.end - self.start:
            raise ValueError("more bytes than the piece's span")
        self.parts.append(chunk)
        self.got += len(chunk)
        self._wake()

    def finish(self, ok: bool) -> None:
        if self.done or self.failed:
            return
        if ok and self.got == self.end - self.start:
            self.done = True
        else:
            self.failed = True
        self._wake()

    def data(self) -> bytes | None:
        """The whole span once it arrived (joined once), else None."""
        if not self.done:
            return None
        if self._whole is None:
            self._whole = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        return self._whole

    async def first_byte(self, timeout: float) -> bool:
        """Whether a byte arrived, waiting at most ``timeout`` seconds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.got and not self.failed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await self._wait(left)
            except TimeoutError:
                return False
        return self.got > 0 and not self.failed

    async def follow(self, offset: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[offset, end)`` as they arrive (module docstring)."""
        if not self.start <= offset <= end <= self.end:
            raise ValueError(f"{offset}-{end} outside the feed's {self.start}-{self.end}")
        index, at, pos = 0, self.start, offset  # at: the first byte of parts[index]
        while pos < end:
            while index < len(self.parts) and at + len(self.parts[index]) <= pos:
                at += len(self.parts[index])
                index += 1
            if index < len(self.parts):
                part = self.parts[index]
                chunk = part[pos - at:end - at]
                pos += len(chunk)
                yield chunk
                continue
            if self.failed or self.done:
                raise ConnectionAbortedError("the piece's source failed")
            try:
                await self._wait(self.stall_s)
            except TimeoutError:
                raise ConnectionAbortedError("the piece's source stalled") from None

    async def _wait(self, timeout: float) -> None:
        """Until the next ``add``/``finish`` (``TimeoutError`` after ``timeout``)."""
        changed = self._changed
        self._waiting += 1
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        finally:
            self._waiting -= 1

    def _wake(self) -> None:
        if not self._waiting:
            return
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
