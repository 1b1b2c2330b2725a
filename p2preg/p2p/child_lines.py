"""``ChildLines``: an assigned child's piece answers at one parent, sent one at a time.

Coordinated forwarding (``swarm.tracker``, scheduler rule 0) lets a child keep
``parent_requests`` piece requests at its parent (1 by default: with 2, the next request is
already there when the current piece's last byte leaves, no request round trip of idle link
per piece and hop; measured slower on the lab, docs/benchmarks-swarm.md). Sent at once they
would split the parent's upload to that child as 4 concurrent ones did (every piece slower,
the first one later); so the parent sends them **one at a time**:
an answer waits for its turn in the child's line once it is ready to send (held, or its first
byte came), and takes the turn in the order the answers got ready (a piece still awaited never
blocks one the parent already has). The line is per (digest, child), as the scheduler counts
requests per parent.

It also remembers when each child's last answer here ended (the most recent 4,096 children
by digest), so the server can tell how long the child's link sat idle before its next request
came (``idle_before``: a request round trip per piece without the pipeline).

Must not import aiohttp, the node, gossip or storage: asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator

#: How many (digest, child) end times ``ChildLines`` remembers.
REMEMBERED_ENDS = 4096


class ChildLines:
    """One ``asyncio.Lock`` per (digest, child) with waiters; forgotten when nobody holds it."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        self._ended: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lines)

    def users(self, digest: str, child: str) -> int:
        """Answers holding or waiting for ``child``'s line for ``digest``."""
        line = self._lines.get((digest, child))
        return 0 if line is None else line[1][0]

    def ended(self, digest: str, child: str, now: float) -> None:
        """An answer to ``child`` for ``digest`` ended (its last byte was written) at ``now``."""
        key = (digest, child)
        self._ended[key] = now
        self._ended.move_to_end(key)
        while len(self._ended) > REMEMBERED_ENDS:
            self._ended.popitem(last=False)

    def idle_before(self, digest: str, child: str, arrived: float) -> float | None:
        """How long after the child's last answer here ended a request that ``arrived`` came
        (0 when it was already waiting; None: no earlier answer). Read it in the turn: the
        answer before it has ended then."""
        end = self._ended.get((digest, child))
        return None if end is None else max(0.0, arrived - end)

    @contextlib.asynccontextmanager
    async def turn(self, digest: str, child: str) -> AsyncIterator[None]:
        """Hold ``child``'s line for ``digest`` while the body sends one answer."""
        key = (digest, child)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = (asyncio.Lock(), [0])
        lock, users = line
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._lines[key]
