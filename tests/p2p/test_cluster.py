"""Mirror nodes on loopback pulling through each other: the pull path of DESIGN.md end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from p2preg.fetch.singleflight import FillError
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.wire import Keyring
from p2preg.oci.digest import Digest
from p2preg.p2p.node_glue import P2PConfig
from p2preg.p2p.routing import owner_of
from tests.conftest import require_tool
from tests.p2p.harness import KEY_A, Cluster, ClusterNode, CountingUpstream, FakePeer, payload

REPO = "library/app"
#: One peer after another (the owner's path, and ``swarm=False``): FakePeers speak only this.
SEQUENTIAL = P2PConfig(swarm=False)


def tmp_files(cluster: Cluster) -> list[Path]:
    return [p for n in cluster.nodes for p in n.blobs.layout.tmp_dir.iterdir()]


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "cluster key"])
async def test_nodes_stream_a_blob_from_the_peer_that_holds_it(
        cluster: Cluster, upstream: CountingUpstream, keyed: bool) -> None:
    cluster.keyring = Keyring([KEY_A]) if keyed else None
    data, digest = payload(700_000)
    upstream.add(data)
    holder = await cluster.add_node("a")
    others = [await cluster.add_node("b"), await cluster.add_node("c")]
    await holder.blobs.put_bytes(data, digest)
    holder.membership.advertise_have(str(digest))

    for node in others:
        assert await node.get_blob(REPO, str(digest)) == (200, data)
        assert node.blobs.has(digest)

    assert upstream.blob_gets[str(digest)] == 0
    metrics = CollectorRegistry()
    holder.p2p.register_metrics(metrics)
    # The digest's owner streams it whole from the holder; any other node takes its 3 pieces
    # of 256 KiB from the holder (or, for c, from b once b holds it too).
    owner = owner_of(str(digest), ["a", "b", "c"])
    swarmers = [n for n in others if n.name != owner]
    assert sum(n.p2p.server.stats.served["piece"] for n in cluster.nodes) == 3 * len(swarmers)
    local = metrics.get_sample_value("p2preg_p2p_served_total", {"kind": "local"})
    assert local == (1 if owner in ("b", "c") else 0)
    assert holder.p2p.server.stats.rejected == {}
    assert set(cluster.static.nodes_in_state(str(digest), "have")) == {"a", "b", "c"}


async def test_a_node_with_another_cluster_key_is_refused_and_uses_the_upstream(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(50_000)
    upstream.add(data)
    holder = await cluster.add_node("a", keyring=Keyring([KEY_A]))
    stranger = await cluster.add_node("b", keyring=Keyring([bytes(range(1, 33))]))
    await holder.blobs.put_bytes(data, digest)
    holder.membership.advertise_have(str(digest))

    assert await stranger.get_blob(REPO, str(digest)) == (200, data)
    assert holder.p2p.server.stats.rejected["bad_signature"] == 1
    assert upstream.blob_gets[str(digest)] == 1


async def test_a_peer_dying_mid_stream_is_resumed_with_range_from_the_next_source(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    cluster.p2p_config = SEQUENTIAL
    data, digest = payload(900_000)
    upstream.add(data)
    dying = await FakePeer(data, die_at=300_000).start()
    good = await FakePeer(data).start()
    try:
        for peer, name in ((dying, "dying"), (good, "good")):
            cluster.static.add(name, peer.host)
            cluster.static.set_state(name, str(digest), "have")
        puller = await cluster.add_node("puller")

        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        await dying.stop()
        await good.stop()
    assert dying.ranges == [None]
    assert len(good.ranges) == 1 and good.ranges[0] is not None
    resumed_at = int(good.ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 300_000
    assert upstream.blob_gets[str(digest)] == 0
    assert puller.p2p.penalties.demoted() == {"dying"}
    assert puller.blobs.has(digest) and not tmp_files(cluster)


async def test_a_silent_peer_is_given_up_after_the_idle_timeout_and_resumed_elsewhere(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    cluster.p2p_config = SEQUENTIAL
    data, digest = payload(500_000)
    upstream.add(data)
    cluster.idle_timeout_s = 0.3  # aiohttp's read timeout runs on the loop's clock
    silent = await FakePeer(data, stall_at=100_000).start()
    good = await FakePeer(data).start()
    try:
        for peer, name in ((silent, "silent"), (good, "good")):
            cluster.static.add(name, peer.host)
            cluster.static.set_state(name, str(digest), "have")
        puller = await cluster.add_node("puller")
        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        await silent.stop()
        await good.stop()
    assert good.ranges and good.ranges[0] is not None
    assert 0 < int(good.ranges[0].removeprefix("bytes=").rstrip("-")) <= 100_000
    assert puller.p2p.penalties.demoted() == {"silent"}


async def test_an_unreachable_holder_is_skipped_and_demoted(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    cluster.p2p_config = SEQUENTIAL
    data, digest = payload(200_000)
    upstream.add(data)
    cluster.static.add("gone", "127.0.0.1:1")  # nothing listens on port 1
    cluster.static.set_state("gone", str(digest), "have")
    holder = await cluster.add_node("holder")
    await holder.blobs.put_bytes(data, digest)
    holder.membership.advertise_have(str(digest))
    puller = await cluster.add_node("puller")

    assert await puller.get_blob(REPO, str(digest)) == (200, data)
    assert holder.p2p.server.stats.served["local"] == 1
    assert puller.p2p.penalties.demoted() == {"gone"}
    assert upstream.blob_gets[str(digest)] == 0


async def test_a_lying_peer_commits_nothing_is_penalised_and_the_next_pull_uses_another_source(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    cluster.p2p_config = SEQUENTIAL
    data, digest = payload(600_000)
    upstream.add(data)
    liar = await FakePeer(data, corrupt=True).start()
    try:
        cluster.static.add("liar", liar.host)
        cluster.static.set_state("liar", str(digest), "have")
        good = await cluster.add_node("good")
        await good.blobs.put_bytes(data, digest)
        good.membership.advertise_have(str(digest))
        puller = await cluster.add_node("puller")

        with pytest.raises(aiohttp.ClientPayloadError):  # aborted: never a complete wrong body
            await puller.get_blob(REPO, str(digest))
        await _fill_failed(puller, digest)
        assert not puller.blobs.has(digest)
        assert puller.p2p.penalties.skipped(str(digest)) == {"liar"}
        assert "puller" not in cluster.static.nodes_in_state(str(digest), "have")

        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        await liar.stop()
    assert len(liar.ranges) == 1
    assert good.p2p.server.stats.served["local"] == 1
    assert upstream.blob_gets[str(digest)] == 0
    assert not tmp_files(cluster)


async def test_a_peer_serves_a_blob_that_is_still_arriving_from_a_slow_upstream(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(1_500_000)
    upstream.add(data)
    gate = asyncio.Event()
    upstream.holds[str(digest)] = (600_000, gate)
    nodes = [await cluster.add_node(name) for name in ("n1", "n2")]
    owner = next(n for n in nodes if n.name == owner_of(str(digest), ["n1", "n2"]))
    other = next(n for n in nodes if n is not owner)

    first_pull = asyncio.create_task(owner.get_blob(REPO, str(digest)))
    await asyncio.wait_for(upstream.held.wait(), 10)
    url = f"http://{other.host}/v2/{REPO}/blobs/{digest}"
    async with other.http.get(url) as resp:
        assert resp.status == 200
        early = await asyncio.wait_for(resp.content.readany(), 10)  # the upstream is still held
        assert early and data.startswith(early)
        assert not gate.is_set()
        gate.set()
        rest = await resp.read()
    assert early + rest == data
    assert await first_pull == (200, data)
    assert owner.p2p.server.stats.served["piece"] == 6  # 1.5 MB: 6 pieces, all from the owner
    assert upstream.blob_gets[str(digest)] == 1


async def test_many_nodes_pulling_one_uncached_blob_cause_one_upstream_get(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(2_000_000)
    upstream.add(data)
    gate = asyncio.Event()
    upstream.holds[str(digest)] = (500_000, gate)
    nodes = [await cluster.add_node(f"n{i}") for i in range(5)]

    pulls = [asyncio.create_task(n.get_blob(REPO, str(digest))) for n in nodes]
    await asyncio.wait_for(upstream.held.wait(), 10)
    gate.set()
    assert await asyncio.gather(*pulls) == [(200, data)] * len(nodes)

    assert upstream.blob_gets[str(digest)] == 1
    owner = cluster.node(owner_of(str(digest), [n.name for n in nodes]) or "")
    assert owner.p2p.stats.fills_without_peers == 1  # the owner went to the upstream
    for node in nodes:
        assert node.blobs.has(digest)
        if node is not owner:  # every other node streamed from a peer (the owner or a fetcher)
            assert node.p2p.stats.fills_with_peers == 1
            assert node.p2p.stats.fills_without_peers == 0


async def test_when_the_owner_is_dead_the_next_owner_fetches_once(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(300_000)
    upstream.add(data)
    nodes = [await cluster.add_node(f"n{i}") for i in range(4)]
    names = [n.name for n in nodes]
    dead = owner_of(str(digest), names)
    cluster.static.set_status(dead or "", MemberStatus.DEAD)
    alive = [n for n in nodes if n.name != dead]

    results = await asyncio.gather(*(n.get_blob(REPO, str(digest)) for n in alive))
    assert results == [(200, data)] * len(alive)
    assert upstream.blob_gets[str(digest)] == 1
    assert not cluster.node(dead or "").blobs.has(digest)


async def test_a_blob_unknown_upstream_is_blob_unknown_everywhere(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    _, digest = payload(1000)
    nodes = [await cluster.add_node(f"n{i}") for i in range(3)]
    for node in nodes:
        status, body = await node.get_blob(REPO, str(digest))
        assert status == 404
        assert b"BLOB_UNKNOWN" in body


@pytest.mark.clients
async def test_one_upstream_get_at_a_real_distribution_origin(tmp_path: Path) -> None:
    require_tool("docker-registry")
    from tests.support.daemons import distribution

    data, digest = payload(3_000_000, seed=11)
    with distribution() as origin:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{origin.url}/v2/{REPO}/blobs/uploads/") as resp:
                assert resp.status == 202
                location = resp.headers["Location"]
            sep = "&" if "?" in location else "?"
            put_url = location if location.startswith("http") else origin.url + location
            async with http.put(f"{put_url}{sep}digest={digest}", data=data) as resp:
                assert resp.status == 201
        cluster = Cluster(tmp_path / "nodes", origin.url)
        try:
            nodes = [await cluster.add_node(f"n{i}") for i in range(4)]
            results = await asyncio.gather(*(n.get_blob(REPO, str(digest)) for n in nodes))
        finally:
            await cluster.stop()
        assert results == [(200, data)] * len(nodes)
        assert origin.blob_gets(str(digest)) == 1


async def _fill_failed(node: ClusterNode, digest: Digest) -> None:
    """Wait (on the fill's own event, not the clock) until the fill of ``digest`` has failed."""
    fill = node.mirror.fetcher.in_flight(digest)
    if fill is not None:
        with pytest.raises(FillError):
            await fill.wait()
    await asyncio.sleep(0)  # one loop turn: the watcher records the outcome
