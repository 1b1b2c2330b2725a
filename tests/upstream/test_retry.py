"""Backoff and Retry-After: pure functions, seeded randomness."""

from __future__ import annotations

import random

import pytest

from p2preg.upstream.retry import backoff_delay_s, parse_retry_after


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("7", now_epoch_s=0) == 7.0


def test_retry_after_as_http_date_is_relative_to_now() -> None:
    # Thu, 01 Jan 2026 00:00:10 GMT is 10 s after 2026-01-01T00:00:00Z.
    now = 1767225600.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now) == pytest.approx(10.0)


@pytest.mark.parametrize("value", [None, "", "soon", "-3", "1.5.2"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, 0.0) is None


def test_backoff_grows_exponentially_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (10, 4.0)]:
        for _ in range(50):
            delay = backoff_delay_s(attempt, rng, base_s=0.25, max_s=4.0)
            assert 0.125 <= delay <= ceiling


def test_backoff_is_deterministic_for_a_seed() -> None:
    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff_delay_s(a, rng, base_s=0.1, max_s=5) for a in range(1, 6)]

    assert delays(3) == delays(3)
    assert delays(3) != delays(4)


def test_retry_after_is_a_floor_for_the_delay() -> None:
    delay = backoff_delay_s(1, random.Random(1), base_s=0.25, max_s=4, retry_after_s=3.0)
    assert delay == 3.0
