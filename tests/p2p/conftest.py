"""Fixtures of the loopback cluster tests: a counting upstream and a cluster of mirror nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.p2p.harness import Cluster, CountingUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    fake = await CountingUpstream().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def cluster(tmp_path: Path, upstream: CountingUpstream) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, f"http://{upstream.host}")
    yield c
    await c.stop()
