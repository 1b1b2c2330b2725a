"""When to retry an upstream request and how long to wait first. Pure functions.

Owns: ``RETRYABLE_STATUSES``, ``parse_retry_after`` (delta-seconds or an HTTP date, read against
an injected ``now``) and ``backoff_delay_s`` (capped exponential backoff with full jitter from a
seeded ``random.Random``, never shorter than the server's ``Retry-After``). No I/O, no clock
reads. Must not import aiohttp or any other p2preg package.
"""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_epoch_s)


def backoff_delay_s(
    attempt: int,
    rng: random.Random,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry).

    Full jitter over ``[base/2, min(max, base * 2**(attempt-1))]``; a server's ``Retry-After`` is
    a floor (it knows when it will be ready), so the result is ``max(jitter, retry_after)``.
    """
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    jitter = rng.uniform(min(base_s / 2, ceiling), ceiling)
    return max(jitter, retry_after_s or 0.0)
