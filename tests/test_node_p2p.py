"""Whole mirror nodes (``Node``, as ``p2preg serve`` builds them) with gossip and a cluster key:
the peer-to-peer pull path end to end, counted at the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci.digest import parse_digest
from tests.p2p.harness import CountingUpstream, payload

REPO = "library/app"
DEADLINE_S = 20.0


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition fed by gossip over real sockets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    server = await CountingUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def cluster(tmp_path: Path, upstream: CountingUpstream) -> AsyncIterator[list[Node]]:
    key_file = tmp_path / "cluster.keys"
    key_file.write_text("0f" * 32 + "\n")
    nodes: list[Node] = []
    try:
        for name in ("n0", "n1", "n2"):
            join = ()
            if nodes:
                host, port = nodes[0].gossip.bound_address[:2]
                join = (f"{host}:{port}",)
            node = Node(Config(
                mode="mirror", listen="127.0.0.1:0", data_dir=str(tmp_path / name),
                upstream=(f"docker.io=http://{upstream.host}",), gossip_listen="127.0.0.1:0",
                join=join, node_name=name, cluster_key_file=str(key_file),
            ))
            await node.start()
            nodes.append(node)
        await until(lambda: all(
            sum(m.status.value == "alive" for m in n.gossip.members()) == 3 for n in nodes))
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()


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
