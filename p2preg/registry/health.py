"""Readiness of a node, as ``GET /healthz`` reports it.

Owns: ``Health``: named checks the node registers (each returns ``None`` when fine or a short
reason when not) plus a manual switch the node flips while starting or draining. ``report()`` is
the ``/healthz`` answer: ``(200, {"status": "ok"})`` or ``(503, {"status": "unavailable",
"reasons": {...}})``. Reasons are short strings chosen by the node, never exception text with
secrets in it.

Must not import aiohttp or other p2preg modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Check = Callable[[], str | None]


class Health:
    """Readiness checks plus a manual not-ready switch."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._unready_reason: str | None = None

    def add_check(self, name: str, check: Check) -> None:
        """Run ``check`` on every ``/healthz``; a returned string marks the node unavailable."""
        self._checks[name] = check

    def set_unready(self, reason: str) -> None:
        """Report unavailable (e.g. while starting or draining) until ``set_ready``."""
        self._unready_reason = reason

    def set_ready(self) -> None:
        self._unready_reason = None

    def reasons(self) -> dict[str, str]:
        """Every failing check by name (``"node"`` for the manual switch)."""
        failing: dict[str, str] = {}
        if self._unready_reason is not None:
            failing["node"] = self._unready_reason
        for name, check in self._checks.items():
            try:
                reason = check()
            except Exception:  # a broken check reports, it never breaks /healthz
                log.exception("health check %s raised", name)
                reason = "check failed"
            if reason is not None:
                failing[name] = reason
        return failing

    def report(self) -> tuple[int, dict[str, Any]]:
        """The ``/healthz`` status code and JSON body."""
        failing = self.reasons()
        if not failing:
            return 200, {"status": "ok"}
        return 503, {"status": "unavailable", "reasons": failing}
