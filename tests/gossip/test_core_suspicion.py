"""Lifeguard math: suspicion timeouts (memberlist's table) and local health awareness."""

from __future__ import annotations

import pytest

from p2preg.gossip.awareness import Awareness
from p2preg.gossip.suspicion import (
    Suspicion,
    expected_confirmations,
    suspicion_bounds,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("confirmations", "expected", "timeout_s"),
    [
        # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime (min 2 s, max 30 s)
        (0, 3, 30.0),
        (1, 3, 16.0),
        (2, 3, 2.0 + 28.0 * (1 - 0.7924812503605781)),
        (3, 3, 2.0),
        (4, 3, 2.0),
        (0, 0, 2.0),
    ],
)
def test_suspicion_timeout_shrinks_with_confirmations(
    confirmations: int, expected: int, timeout_s: float
) -> None:
    assert suspicion_timeout(confirmations, expected, 2.0, 30.0) == pytest.approx(timeout_s)


@pytest.mark.parametrize(
    ("nodes", "min_s"), [(1, 4.0), (10, 4.0), (100, 8.0), (1000, 12.0), (3000, 4 * 3.4771212547)]
)
def test_suspicion_bounds_scale_with_log10_of_cluster_size(nodes: int, min_s: float) -> None:
    lo, hi = suspicion_bounds(4, 6, nodes, 1.0)
    assert lo == pytest.approx(min_s)
    assert hi == pytest.approx(6 * min_s)


def test_expected_confirmations_need_enough_other_nodes() -> None:
    assert expected_confirmations(4, 100) == 2
    assert expected_confirmations(4, 3) == 0


def test_suspicion_counts_each_independent_accuser_once() -> None:
    s = Suspicion("a", start=100.0, expected=2, min_s=10.0, max_s=60.0)
    assert s.deadline == 160.0
    assert not s.confirm("a")
    assert s.confirm("b")
    assert s.deadline == pytest.approx(100.0 + suspicion_timeout(1, 2, 10.0, 60.0))
    assert s.confirm("c")
    assert s.deadline == 110.0
    assert not s.confirm("d")


def test_awareness_stretches_timeouts_within_bounds() -> None:
    a = Awareness(max_multiplier=8)
    assert a.scale_timeout(0.5) == 0.5
    a.apply_delta(3)
    assert a.scale_timeout(0.5) == 2.0
    a.apply_delta(100)
    assert a.score == 7
    a.apply_delta(-100)
    assert a.score == 0


def test_awareness_disabled_never_moves() -> None:
    a = Awareness(max_multiplier=8, enabled=False)
    a.apply_delta(5)
    assert a.scale_timeout(1.0) == 1.0
