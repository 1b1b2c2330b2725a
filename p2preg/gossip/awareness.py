"""Lifeguard local health awareness (memberlist ``awareness.go``).

A score in ``[0, max_multiplier - 1]``: missed nacks and refuting suspicions about ourselves raise
it, successful probes lower it. Timeouts are stretched by ``score + 1`` so a node that is itself
slow or starved stops accusing healthy peers. Owns: ``Awareness``. Must not import asyncio, sockets
or other p2preg modules.
"""

from __future__ import annotations


class Awareness:
    """The local health score. With ``enabled=False`` it is always 0 (classic SWIM)."""

    __slots__ = ("enabled", "max_multiplier", "score")

    def __init__(self, max_multiplier: int, *, enabled: bool = True) -> None:
        self.max_multiplier = max_multiplier
        self.enabled = enabled
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        if not self.enabled:
            return
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale_timeout(self, timeout_s: float) -> float:
        return timeout_s * (self.score + 1)
