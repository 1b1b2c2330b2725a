"""Fixtures for the multi-host lab tests: ``lab_or_skip`` builds a ``benchmarks.lab.Lab`` or skips
with the reason it cannot run here (fails instead under CI, which runs as root)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks.lab import Lab, LabUnavailable, check_available


def lab_or_skip(n_hosts: int, **kwargs: Any) -> Lab:
    """A ``Lab`` (not yet opened: use it in a ``with``), or skip saying why it cannot run."""
    try:
        check_available()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the lab cannot run under CI: {exc}")
        pytest.skip(str(exc))
    return Lab(n_hosts, **kwargs)
