"""A real Distribution origin holding a test image, 3 mirror nodes joined by gossip in front of
it, and the ``p2preg`` CLI run as a subprocess against them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from p2preg.node import Node
from tests.conftest import require_tool
from tests.support.cluster import mirror_cluster
from tests.support.daemons import Distribution, distribution, skopeo_copy
from tests.support.images import BuiltImage, build_image

MiB = 1 << 20


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The nodes run on uvloop, as ``p2preg serve`` does: there every body byte goes through
    aiohttp's writer, so the upload counters the fan-out report reads are exact (under the
    stdlib loop a sendfile bypasses them)."""
    return {"uvloop": uvloop.new_event_loop}


@dataclass
class Origin:
    registry: Distribution
    image: BuiltImage

    def blob_gets(self) -> dict[str, int]:
        return {d: self.registry.blob_gets(d) for d in self.image.blob_digests}

    def blob_bytes_sent(self) -> int:
        return sum(r.written for r in self.registry.requests()
                   if r.method == "GET" and "/blobs/" in r.path and r.status in (200, 206))


@pytest.fixture
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """Distribution with ``library/busybox:latest`` (busybox, hello and a 3 MiB payload layer)."""
    require_tool("docker-registry", "skopeo")
    image = build_image(tmp_path_factory.mktemp("image") / "layout",
                        payload_layer_sizes=[3 * MiB], seed=12)
    with distribution() as registry:
        skopeo_copy(image.oci_ref, f"docker://{registry.host}/library/busybox:latest")
        yield Origin(registry, image)


@pytest.fixture
async def cluster(tmp_path: Path, origin: Origin) -> AsyncIterator[list[Node]]:
    """3 nodes as deployed: /v2 (and the operator routes) on --listen, /p2p on --peer-listen."""
    async with mirror_cluster(tmp_path, origin.registry.host, peer_listen="127.0.0.1:0") as nodes:
        yield nodes


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run_cli(*args: str, timeout_s: float = 120.0) -> Ran:
    """``python -m p2preg ARGS`` without blocking the event loop the nodes run on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2preg", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())
