"""The transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

Each queued update is piggybacked on outgoing packets until it has been sent
``retransmit_limit(mult, n) = mult * ceil(log10(n + 1))`` times; updates sent the fewest times go
first (newest first among equals); queuing an update about a subject that is already queued
replaces the older one. Owns: ``BroadcastQueue`` and ``retransmit_limit``. Must not import asyncio,
sockets or other p2preg modules.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable


def retransmit_limit(mult: int, num_nodes: int) -> int:
    """How many times an update is sent in a cluster of ``num_nodes``: ``mult*ceil(log10(n+1))``."""
    return mult * math.ceil(math.log10(num_nodes + 1))


class _Item:
    __slots__ = ("live", "mtype", "order", "payload", "subject", "transmits")

    def __init__(self, subject: Hashable, mtype: int, payload: bytes, order: int) -> None:
        self.subject = subject
        self.mtype = mtype
        self.payload = payload
        self.order = order
        self.transmits = 0
        self.live = True


class BroadcastQueue:
    """Pre-encoded ``(type, body)`` updates keyed by subject, drained least-sent first."""

    __slots__ = ("_by_subject", "_heap", "_order", "retransmit_mult")

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._by_subject: dict[Hashable, _Item] = {}
        self._heap: list[tuple[int, int, _Item]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._by_subject)

    def queue(self, subject: Hashable, mtype: int, payload: bytes) -> None:
        """Queue an update; an older queued update about the same subject is dropped."""
        old = self._by_subject.get(subject)
        if old is not None:
            old.live = False
        item = _Item(subject, mtype, payload, next(self._order))
        self._by_subject[subject] = item
        heapq.heappush(self._heap, (0, -item.order, item))

    def has(self, subject: Hashable) -> bool:
        return subject in self._by_subject

    def get(self, budget_bytes: int, part_overhead: int, num_nodes: int) -> list[tuple[int, bytes]]:
        """Take updates whose encoded size (plus ``part_overhead`` each) fits ``budget_bytes``.

        Each taken update counts one transmission; it leaves the queue at the retransmit limit.
        """
        if not self._heap or budget_bytes <= part_overhead:
            return []
        limit = retransmit_limit(self.retransmit_mult, num_nodes)
        taken: list[_Item] = []
        skipped: list[tuple[int, int, _Item]] = []
        heap = self._heap
        misses = 0
        while heap and budget_bytes > part_overhead and misses < 8:
            entry = heapq.heappop(heap)
            item = entry[2]
            if not item.live:
                continue
            size = len(item.payload) + part_overhead
            if size > budget_bytes:
                skipped.append(entry)
                misses += 1
                continue
            budget_bytes -= size
            taken.append(item)
        out: list[tuple[int, bytes]] = []
        for item in taken:
            out.append((item.mtype, item.payload))
            item.transmits += 1
            if item.transmits >= limit:
                item.live = False
                del self._by_subject[item.subject]
            else:
                heapq.heappush(heap, (item.transmits, -item.order, item))
        for entry in skipped:
            heapq.heappush(heap, entry)
        if len(heap) > 4 * len(self._by_subject) + 64:
            self._heap = [e for e in heap if e[2].live]
            heapq.heapify(self._heap)
        return out
