"""A circuit breaker per upstream: stop waiting on an upstream that was just silent or failing.

Owns: ``CircuitBreaker`` (a table-driven state machine: ``closed`` -> ``open`` -> ``half_open``
-> ``closed`` or back to ``open``), ``BreakerState`` and ``BreakerEvent``. Pure: it reads no
clock (every call takes ``now``) and does no I/O. Must not import aiohttp or any other p2preg
package.

Rules, in order:

1. ``closed``: every request goes out. A request that gave up (no answer within its deadlines,
   or only 5xx/429 through its retries) opens the breaker for ``open_s``.
2. ``open``: no request goes out (the caller fails at once: a last known tag is served at once,
   an uncached manifest gets its 503 at once) until ``open_s`` has passed since it opened.
3. After that the first request is the *probe* (``half_open``); it gets one attempt, no retry
   schedule. Other requests meanwhile are refused as in ``open``: one silent upstream costs one
   waiting request per open period, not one per client.
4. Any answer (a response of any status the caller does not retry: 200, 404, 401…) closes the
   breaker. A failed probe opens it again for twice the last period, at most ``max_open_s``.
5. A probe that was abandoned (the caller was cancelled before it knew) lets the next request
   probe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    PERIOD_OVER = "period_over"  # the open period has passed: the next request probes
    ABANDONED = "abandoned"


#: (state, event) -> next state. A pair that is missing leaves the state as it is.
TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    (BreakerState.CLOSED, BreakerEvent.FAILURE): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerEvent.PERIOD_OVER): BreakerState.HALF_OPEN,
    (BreakerState.OPEN, BreakerEvent.SUCCESS): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.SUCCESS): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.FAILURE): BreakerState.OPEN,
}

DEFAULT_OPEN_S = 5.0
DEFAULT_MAX_OPEN_S = 60.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may go out now and, if so, whether it is the half-open probe."""

    allowed: bool
    probe: bool = False
    retry_in_s: float = 0.0  # when refused: how long until the next probe may go out


class CircuitBreaker:
    """See the module docstring. Not thread-safe (one event loop)."""

    def __init__(self, *, open_s: float = DEFAULT_OPEN_S,
                 max_open_s: float = DEFAULT_MAX_OPEN_S) -> None:
        if not 0 < open_s <= max_open_s:
            raise ValueError("breaker periods: need 0 < open_s <= max_open_s")
        self.open_s = open_s
        self.max_open_s = max_open_s
        self.state = BreakerState.CLOSED
        self._period_s = open_s
        self._open_until = float("-inf")
        self._probing = False
        self.opened_total = 0
        self.refused_total = 0

    def _fire(self, event: BreakerEvent) -> BreakerState:
        self.state = TRANSITIONS.get((self.state, event), self.state)
        return self.state

    def admit(self, now: float) -> Admission:
        """May a request go out at ``now``? Marks the probe when it is one."""
        if self.state is BreakerState.OPEN and now >= self._open_until:
            self._fire(BreakerEvent.PERIOD_OVER)
        if self.state is BreakerState.CLOSED:
            return Admission(True)
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return Admission(True, probe=True)
        self.refused_total += 1
        return Admission(False, retry_in_s=max(0.0, self._open_until - now))

    def success(self, now: float) -> None:
        """The upstream answered."""
        self._fire(BreakerEvent.SUCCESS)
        self._probing = False
        self._period_s = self.open_s
        self._open_until = float("-inf")

    def failure(self, now: float) -> None:
        """A request gave up on the upstream (silent, unreachable, failing)."""
        before = self.state
        if self._fire(BreakerEvent.FAILURE) is not BreakerState.OPEN:
            return
        if before is BreakerState.HALF_OPEN:
            self._period_s = min(self.max_open_s, self._period_s * 2)
        if before is BreakerState.CLOSED:
            self.opened_total += 1  # outages, not failed probes
        self._probing = False
        self._open_until = max(self._open_until, now + self._period_s)

    def abandoned(self) -> None:
        """The probe ended without an outcome (cancelled): the next request may probe."""
        self._fire(BreakerEvent.ABANDONED)
        self._probing = False

    @property
    def is_open(self) -> bool:
        """True unless closed (open, or half-open with its probe out)."""
        return self.state is not BreakerState.CLOSED
