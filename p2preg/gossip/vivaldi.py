"""Vivaldi network coordinates, as hashicorp/serf ``coordinate`` computes them.

Each node keeps its own coordinate (a Euclidean vector plus a height, an error and an adjustment
term) and moves it on every probe-ack RTT sample against the peer's coordinate carried in the ack.
``distance_s`` between two coordinates estimates the RTT. Owns: ``Coordinate``, ``VivaldiConfig``,
``VivaldiClient``. Must not import asyncio, sockets or other p2preg modules; randomness comes from
the caller's seeded ``random.Random``.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

ZERO_THRESHOLD = 1.0e-6
MAX_RTT_S = 10.0


@dataclass(frozen=True, slots=True)
class VivaldiConfig:
    """Serf's defaults."""

    dimensionality: int = 8
    error_max: float = 1.5
    ce: float = 0.25
    cc: float = 0.25
    adjustment_window: int = 20
    height_min_s: float = 10.0e-6
    latency_filter_size: int = 3
    gravity_rho: float = 150.0


@dataclass(frozen=True, slots=True)
class Coordinate:
    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float

    @classmethod
    def origin(cls, config: VivaldiConfig) -> Coordinate:
        return cls((0.0,) * config.dimensionality, config.error_max, 0.0, config.height_min_s)

    def raw_distance_s(self, other: Coordinate) -> float:
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance_s(self, other: Coordinate) -> float:
        """Estimated RTT to ``other`` in seconds."""
        dist = self.raw_distance_s(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def to_wire(self) -> list[float]:
        return [*self.vec, self.error, self.adjustment, self.height]

    @classmethod
    def from_wire(cls, values: list[float], config: VivaldiConfig) -> Coordinate | None:
        """A coordinate from an ack, or None if its dimensionality or values do not fit ours."""
        if len(values) != config.dimensionality + 3:
            return None
        *vec, error, adjustment, height = values
        if error < 0 or height < 0 or any(abs(v) > 1.0e6 for v in values):
            return None
        return cls(tuple(vec), error, adjustment, height)


def _diff(a: tuple[float, ...], b: tuple[float, ...]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _magnitude(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


class VivaldiClient:
    """The local coordinate and the per-peer latency filters that feed it."""

    __slots__ = ("_adj_index", "_adj_samples", "_filters", "_rng", "config", "coord")

    def __init__(self, config: VivaldiConfig, rng: random.Random) -> None:
        self.config = config
        self.coord = Coordinate.origin(config)
        self._rng = rng
        self._adj_samples = [0.0] * config.adjustment_window
        self._adj_index = 0
        self._filters: dict[str, list[float]] = {}

    def forget(self, node: str) -> None:
        self._filters.pop(node, None)

    def update(self, node: str, other: Coordinate, rtt_s: float) -> bool:
        """Move our coordinate by one RTT sample to ``node``; False (ignored) if implausible."""
        if not (0.0 <= rtt_s <= MAX_RTT_S) or len(other.vec) != self.config.dimensionality:
            return False
        samples = self._filters.setdefault(node, [])
        samples.append(rtt_s)
        if len(samples) > self.config.latency_filter_size:
            del samples[0]
        rtt = statistics.median(samples)
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        return True

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        cfg = self.config
        rtt = max(rtt, ZERO_THRESHOLD)
        dist = self.coord.distance_s(other)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(self.coord.error + other.error, ZERO_THRESHOLD)
        weight = self.coord.error / total_error
        error = min(
            cfg.ce * weight * wrongness + self.coord.error * (1.0 - cfg.ce * weight), cfg.error_max
        )
        force = cfg.cc * weight * (rtt - dist)
        moved = self._apply_force(force, other)
        self.coord = Coordinate(moved.vec, error, moved.adjustment, moved.height)

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        window = self.config.adjustment_window
        if window == 0:
            return
        self._adj_samples[self._adj_index] = rtt - self.coord.raw_distance_s(other)
        self._adj_index = (self._adj_index + 1) % window
        adjustment = sum(self._adj_samples) / (2.0 * window)
        c = self.coord
        self.coord = Coordinate(c.vec, c.error, adjustment, c.height)

    def _update_gravity(self) -> None:
        origin = Coordinate.origin(self.config)
        dist = origin.distance_s(self.coord)
        force = -1.0 * (dist / self.config.gravity_rho) ** 2
        self.coord = self._apply_force(force, origin)

    def _apply_force(self, force: float, other: Coordinate) -> Coordinate:
        c = self.coord
        unit, mag = self._unit_vector_at(c.vec, other.vec)
        vec = tuple(x + u * force for x, u in zip(c.vec, unit, strict=True))
        height = c.height
        if mag > ZERO_THRESHOLD:
            height = max(
                (c.height + other.height) * force / mag + c.height, self.config.height_min_s
            )
        return Coordinate(vec, c.error, c.adjustment, height)

    def _unit_vector_at(
        self, a: tuple[float, ...], b: tuple[float, ...]
    ) -> tuple[list[float], float]:
        d = _diff(a, b)
        mag = _magnitude(d)
        if mag > ZERO_THRESHOLD:
            return [x / mag for x in d], mag
        for _ in range(8):
            r = [self._rng.random() - 0.5 for _ in a]
            m = _magnitude(r)
            if m > ZERO_THRESHOLD:
                return [x / m for x in r], 0.0
        return [1.0] + [0.0] * (len(a) - 1), 0.0
