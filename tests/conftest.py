"""Shared pytest configuration: tool requirements and common fixtures.

Tests that need an external program call ``require_tool``: when the ``CI`` environment variable is
set a missing tool is a failure (CI installs everything), elsewhere it is a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from p2preg.node import Node
    from tests.p2p.harness import CountingUpstream


def require_tool(*names: str) -> None:
    """Fail under CI, skip elsewhere, when any of ``names`` is not on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    message = f"required tool(s) not installed: {', '.join(missing)}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_root() -> None:
    """Fail under CI, skip elsewhere, when not running as root (network namespaces)."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("this test needs root")
    pytest.skip("this test needs root")


@pytest.fixture
async def counting_upstream() -> AsyncIterator[CountingUpstream]:
    """A fake origin on loopback that counts the blob GETs it answers (``tests.p2p.harness``)."""
    from tests.p2p.harness import CountingUpstream

    server = await CountingUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def mirror_nodes(
    tmp_path: Path, counting_upstream: CountingUpstream
) -> AsyncIterator[list[Node]]:
    """n0, n1, n2: whole mirror nodes with gossip and a cluster key, docker.io =
    ``counting_upstream`` (``tests.support.cluster.mirror_cluster``)."""
    from tests.support.cluster import mirror_cluster

    async with mirror_cluster(tmp_path, counting_upstream.host) as nodes:
        yield nodes
