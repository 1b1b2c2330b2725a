"""The short memory of peers that let this node down: skipped for a digest, or tried last.

Owns: ``PenaltyBox``. A peer that sent wrong bytes for a digest is *skipped* for that digest for
``wrong_bytes_s`` and *demoted* (tried after every other peer) for every digest for the same
time; a peer that failed (unreachable, broke off, answered garbage) is demoted for
``failure_s``. Entries expire by the injected clock; the box never holds more than
``max_entries`` (the oldest are forgotten first), so a misbehaving cluster cannot grow it.

Pure apart from reading the injected clock; must not import aiohttp, asyncio or other packages.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from p2preg.clock import Clock

DEFAULT_WRONG_BYTES_S = 600.0
DEFAULT_FAILURE_S = 30.0
DEFAULT_MAX_ENTRIES = 10_000

K = TypeVar("K")


class PenaltyBox:
    """Which peers to skip (per digest) or try last (per peer), until when."""

    def __init__(self, clock: Clock, *, wrong_bytes_s: float = DEFAULT_WRONG_BYTES_S,
                 failure_s: float = DEFAULT_FAILURE_S,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._clock = clock
        self.wrong_bytes_s = wrong_bytes_s
        self.failure_s = failure_s
        self.max_entries = max_entries
        self._skipped: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._demoted: OrderedDict[str, float] = OrderedDict()
        self.wrong_bytes_total = 0
        self.failures_total = 0

    def wrong_bytes(self, peer: str, digest: str) -> None:
        """``peer`` sent bytes that did not hash to ``digest``."""
        self.wrong_bytes_total += 1
        until = self._clock.now() + self.wrong_bytes_s
        _put(self._skipped, (peer, digest), until, self.max_entries)
        _put(self._demoted, peer, max(until, self._demoted.get(peer, until)), self.max_entries)

    def failed(self, peer: str) -> None:
        """``peer`` could not deliver (connection, timeout, protocol violation)."""
        self.failures_total += 1
        until = self._clock.now() + self.failure_s
        _put(self._demoted, peer, max(until, self._demoted.get(peer, until)), self.max_entries)

    def skipped(self, digest: str) -> frozenset[str]:
        """Peers not to ask for ``digest`` now."""
        now = self._clock.now()
        _expire(self._skipped, now)
        return frozenset(peer for (peer, d), _until in self._skipped.items() if d == digest)

    def demoted(self) -> frozenset[str]:
        """Peers to try only after every other peer."""
        now = self._clock.now()
        _expire(self._demoted, now)
        return frozenset(self._demoted)

    def __len__(self) -> int:
        return len(self._skipped) + len(self._demoted)


def _put(table: OrderedDict[K, float], key: K, until: float, cap: int) -> None:
    table[key] = until
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


def _expire(table: OrderedDict[K, float], now: float) -> None:
    for key in [k for k, until in table.items() if until <= now]:
        del table[key]
