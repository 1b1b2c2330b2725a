"""The upstream circuit breaker as a pure state machine: tables of (calls, expected states)."""

from __future__ import annotations

import pytest

from p2preg.upstream.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def run(steps: list[tuple[float, str]], **periods: float) -> list[tuple[str, BreakerState]]:
    """Apply ``(now, call)`` steps; each step's result is what ``admit`` said (or the call name)
    and the state after it."""
    breaker = CircuitBreaker(**periods)
    out: list[tuple[str, BreakerState]] = []
    for now, call in steps:
        if call == "admit":
            a = breaker.admit(now)
            said = "probe" if a.probe else ("go" if a.allowed else f"refused {a.retry_in_s:g}")
        elif call == "ok":
            breaker.success(now)
            said = "ok"
        elif call == "fail":
            breaker.failure(now)
            said = "fail"
        else:
            breaker.abandoned()
            said = "abandoned"
        out.append((said, breaker.state))
    return out


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # closed: everything goes; answers keep it closed
        ([(0, "admit"), (0, "ok"), (1, "admit")],
         [("go", CLOSED), ("ok", CLOSED), ("go", CLOSED)]),
        # one failure opens it for open_s; requests meanwhile are refused with the time left
        ([(0, "fail"), (1, "admit"), (4.5, "admit")],
         [("fail", OPEN), ("refused 4", OPEN), ("refused 0.5", OPEN)]),
        # after open_s one probe goes out; others wait for its outcome
        ([(0, "fail"), (5, "admit"), (5.1, "admit"), (6, "ok"), (6, "admit")],
         [("fail", OPEN), ("probe", HALF), ("refused 0", HALF), ("ok", CLOSED), ("go", CLOSED)]),
        # a failed probe doubles the period (5 -> 10), then 20, capped by max_open_s
        ([(0, "fail"), (5, "admit"), (5, "fail"), (14, "admit"), (15, "admit"), (15, "fail"),
          (34, "admit"), (35, "admit")],
         [("fail", OPEN), ("probe", HALF), ("fail", OPEN), ("refused 1", OPEN), ("probe", HALF),
          ("fail", OPEN), ("refused 1", OPEN), ("probe", HALF)]),
        # success resets the period to open_s
        ([(0, "fail"), (5, "admit"), (5, "fail"), (15, "admit"), (15, "ok"), (20, "fail"),
          (25, "admit")],
         [("fail", OPEN), ("probe", HALF), ("fail", OPEN), ("probe", HALF), ("ok", CLOSED),
          ("fail", OPEN), ("probe", HALF)]),
        # an abandoned probe lets the next request probe
        ([(0, "fail"), (5, "admit"), (5, "abandon"), (5, "admit")],
         [("fail", OPEN), ("probe", HALF), ("abandoned", HALF), ("probe", HALF)]),
        # a late failure of a request sent before the breaker opened extends, never shortens it
        ([(0, "fail"), (3, "fail"), (6, "admit"), (8, "admit")],
         [("fail", OPEN), ("fail", OPEN), ("refused 2", OPEN), ("probe", HALF)]),
        # an answer that arrives while open (a request sent before) closes it
        ([(0, "fail"), (1, "ok"), (1, "admit")],
         [("fail", OPEN), ("ok", CLOSED), ("go", CLOSED)]),
    ],
)
def test_breaker_transitions(steps: list[tuple[float, str]],
                             expected: list[tuple[str, BreakerState]]) -> None:
    assert run(steps, open_s=5.0, max_open_s=60.0) == expected


def test_the_open_period_is_capped() -> None:
    breaker = CircuitBreaker(open_s=5.0, max_open_s=12.0)
    now = 0.0
    breaker.failure(now)
    periods = []
    for _ in range(4):
        opened_at = now
        while not breaker.admit(now).probe:
            now += 1
        periods.append(now - opened_at)
        breaker.failure(now)
    assert periods == [5, 10, 12, 12]
    assert breaker.opened_total == 1  # one outage, however many failed probes


def test_bad_periods_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(open_s=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_s=10, max_open_s=5)
