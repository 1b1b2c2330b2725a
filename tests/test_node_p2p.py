"""Whole mirror nodes (``Node``, as ``p2preg serve`` builds them) with gossip and a cluster key:
the peer-to-peer pull path end to end, counted at the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci.digest import parse_digest
from tests.p2p.harness import CountingUpstream, payload
from tests.support.cluster import mirror_cluster, until

REPO = "library/app"


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    server = await CountingUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def cluster(tmp_path: Path, upstream: CountingUpstream) -> AsyncIterator[list[Node]]:
    """n0, n1, n2: mirror nodes with gossip and a cluster key, docker.io = ``upstream``."""
    async with mirror_cluster(tmp_path, upstream.host) as nodes:
        yield nodes


async def pull(http: aiohttp.ClientSession, node: Node, digest: str) -> bytes:
    async with http.get(f"{node.url}/v2/{REPO}/blobs/{digest}") as response:
        assert response.status == 200, await response.text()
        return await response.read()


async def test_second_pull_comes_from_the_peer_not_the_upstream(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    data, _ = payload(3 * 1024 * 1024, seed=11)
    digest = upstream.add(data)
    first, *others = cluster
    async with aiohttp.ClientSession() as http:
        assert await pull(http, first, digest) == data
        await until(lambda: all(
            any(m.name == "n0" for m in n.gossip.holders(digest)) for n in others))
        bodies = await asyncio.gather(*(pull(http, n, digest) for n in others))
    assert bodies == [data, data]
    assert upstream.blob_gets[digest] == 1
    for node in others:
        assert node.p2p is not None
        assert node.layout.blob_path(parse_digest(digest)).exists()


async def test_cold_concurrent_pulls_on_every_node_leave_the_origin_once(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    data, _ = payload(8 * 1024 * 1024, seed=12)
    digest = upstream.add(data)
    async with aiohttp.ClientSession() as http:
        bodies = await asyncio.gather(*(pull(http, n, digest) for n in cluster for _ in range(2)))
    assert all(body == data for body in bodies)
    assert upstream.blob_gets[digest] == 1


async def test_mirror_records_access_times_of_what_it_serves(
    tmp_path: Path, upstream: CountingUpstream
) -> None:
    data, _ = payload(64 * 1024, seed=13)
    digest = upstream.add(data)
    node = Node(Config(mode="mirror", listen="127.0.0.1:0", data_dir=str(tmp_path / "solo"),
                       upstream=(f"docker.io=http://{upstream.host}",)))
    await node.start()
    try:
        assert node.maintenance is not None
        recorder = node.maintenance.recorder
        async with aiohttp.ClientSession() as http:
            assert await pull(http, node, digest) == data  # cold: filled from the upstream
            await until(lambda: node.layout.blob_path(parse_digest(digest)).exists())
            assert await pull(http, node, digest) == data  # hot: a local hit
        assert recorder.last_access(digest) is not None
        assert upstream.blob_gets[digest] == 1
    finally:
        await node.stop()


# -- manifests -------------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def image_manifest(seed: int) -> bytes:
    """An OCI image manifest without ``mediaType`` (optional in OCI): the type must be inferred."""
    layer = "sha256:" + f"{seed:064x}"
    return (b'{"schemaVersion": 2, "config": {"mediaType": '
            b'"application/vnd.oci.image.config.v1+json", "digest": "' + layer.encode()
            + b'", "size": 2}, "layers": []}')  # fmt: skip


async def get_manifest(http: aiohttp.ClientSession, node: Node, reference: str
                       ) -> tuple[int, str, bytes]:  # fmt: skip
    async with http.get(f"{node.url}/v2/{REPO}/manifests/{reference}",
                        headers={"Accept": OCI_MANIFEST}) as response:
        return response.status, response.content_type, await response.read()


def holds(node: Node, digest: str, holder: str) -> bool:
    assert node.gossip is not None
    return any(m.name == holder for m in node.gossip.holders(digest))


async def pulled_on_first(http: aiohttp.ClientSession, cluster: list[Node],
                          upstream: CountingUpstream, *, seed: int) -> tuple[bytes, str]:
    """A new manifest at the upstream, pulled by digest on n0 and seen held by n0 everywhere."""
    body = image_manifest(seed)
    digest = upstream.add_manifest(f"v{seed}", OCI_MANIFEST, body)
    assert (await get_manifest(http, cluster[0], digest))[0] == 200
    await until(lambda: all(holds(n, digest, "n0") for n in cluster[1:]))
    return body, digest


async def test_a_tag_pulled_on_every_host_is_fetched_from_the_upstream_once(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    body = image_manifest(1)
    digest = upstream.add_manifest("v1", OCI_MANIFEST, body)
    first, *others = cluster
    async with aiohttp.ClientSession() as http:
        assert await get_manifest(http, first, "v1") == (200, OCI_MANIFEST, body)
        await until(lambda: all(holds(n, digest, "n0") for n in others))
        answers = await asyncio.gather(*(get_manifest(http, n, "v1") for n in others))
    assert answers == [(200, OCI_MANIFEST, body)] * 2
    # Every host asked the upstream where the tag points (HEAD: a moved tag is seen at once), but
    # only the first downloaded the manifest; the others took it from n0 and checked its digest.
    assert upstream.manifest_requests[("HEAD", "v1")] == 3
    assert upstream.manifest_requests[("GET", "v1")] == 1
    assert upstream.manifest_requests[("GET", digest)] == 0
    assert sum(n.p2p.stats.manifests_from_peers for n in others if n.p2p) == 2


async def test_a_manifest_by_digest_comes_from_a_peer_while_the_upstream_is_down(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    second = cluster[1]
    async with aiohttp.ClientSession() as http:
        body, digest = await pulled_on_first(http, cluster, upstream, seed=2)
        await upstream.stop()
        assert await get_manifest(http, second, digest) == (200, OCI_MANIFEST, body)


async def test_a_peer_that_holds_a_manifest_with_wrong_bytes_is_penalised_and_skipped(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    first, second, _ = cluster
    async with aiohttp.ClientSession() as http:
        body, digest = await pulled_on_first(http, cluster, upstream, seed=3)
        # n0's copy rots on disk: the bytes no longer match the digest it advertises.
        first.layout.blob_path(parse_digest(digest)).write_bytes(body.replace(b"2", b"3", 1))
        assert await get_manifest(http, second, digest) == (200, OCI_MANIFEST, body)
    assert upstream.manifest_requests[("GET", digest)] == 2  # n1 went to the upstream
    assert second.p2p is not None and second.p2p.penalties.wrong_bytes_total == 1
