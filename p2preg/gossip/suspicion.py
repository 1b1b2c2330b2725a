"""Lifeguard suspicion timeouts (memberlist ``suspicion.go``), as pure functions plus a record.

A suspicion starts at ``max_s`` and shrinks towards ``min_s`` as independent confirmations arrive:
``timeout(c) = max(min_s, max_s - (max_s - min_s) * log(c + 1) / log(k + 1))`` with ``k`` the number
of confirmations expected. Owns: ``suspicion_timeout``, ``suspicion_bounds``, ``Suspicion``. Must
not import asyncio, sockets or other p2preg modules.
"""

from __future__ import annotations

import math


def suspicion_timeout(confirmations: int, expected: int, min_s: float, max_s: float) -> float:
    """Remaining-time formula of memberlist: ``max_s`` with no confirmation, ``min_s`` at ``k``."""
    if expected < 1:
        return min_s
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(min_s, max_s - frac * (max_s - min_s))


def suspicion_bounds(
    suspicion_mult: int, max_timeout_mult: int, num_nodes: int, probe_interval_s: float
) -> tuple[float, float]:
    """``(min_s, max_s)``: ``min = mult * max(1, log10(n)) * probe_interval``, ``max = k * min``."""
    node_scale = max(1.0, math.log10(max(1, num_nodes)))
    min_s = suspicion_mult * node_scale * probe_interval_s
    return min_s, max_timeout_mult * min_s


def expected_confirmations(suspicion_mult: int, num_nodes: int) -> int:
    """``k = mult - 2``, or 0 in clusters too small to produce that many other accusers."""
    k = suspicion_mult - 2
    return 0 if num_nodes - 2 < k else k


class Suspicion:
    """One live suspicion of a member: when it started and who independently confirmed it."""

    __slots__ = ("confirmers", "expected", "max_s", "min_s", "start")

    def __init__(
        self, accuser: str, start: float, expected: int, min_s: float, max_s: float
    ) -> None:
        self.start = start
        self.expected = expected
        self.min_s = min_s
        self.max_s = max_s
        self.confirmers = {accuser}

    def confirm(self, accuser: str) -> bool:
        """Record an accuser; True if it is a new, still useful confirmation."""
        if len(self.confirmers) - 1 >= self.expected or accuser in self.confirmers:
            return False
        self.confirmers.add(accuser)
        return True

    @property
    def deadline(self) -> float:
        n = len(self.confirmers) - 1
        return self.start + suspicion_timeout(n, self.expected, self.min_s, self.max_s)
