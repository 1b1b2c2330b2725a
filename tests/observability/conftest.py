"""Fixtures for the observability tests: a seeded blob file, captured access lines, and the
event loops the byte-counting tests run under (the stdlib loop uses native sendfile for a
``FileResponse``, uvloop streams it through aiohttp's writer: both must count the same)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from p2preg.clock import FakeClock
from p2preg.registry.metrics import RegistryMetrics
from p2preg.registry.observability import Observability
from tests.observability.tinyapp import AccessLines, capture_access_lines

BLOB_SIZE = 3 * 1024 * 1024 + 17
WALL_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name == "test_bytes_sent.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def blob_bytes() -> bytes:
    return random.Random(2).randbytes(BLOB_SIZE)


@pytest.fixture
def blob_file(tmp_path: Path, blob_bytes: bytes) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(blob_bytes)
    return path


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    with capture_access_lines() as handler:
        yield handler


@pytest.fixture
def obs() -> Observability:
    return Observability(RegistryMetrics(), wall_clock=FakeClock(WALL_START))
