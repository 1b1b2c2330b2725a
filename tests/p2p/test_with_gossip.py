"""The p2p path over the real gossip layer: ``GossipService`` on 127.0.0.1 UDP/TCP as membership
and catalog, one cluster key for gossip packets and peer requests.

Waits are on gossip events (a callback sets an ``asyncio.Event``), each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from p2preg.clock import FakeClock
from p2preg.gossip.events import Event
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.service import GossipService, GossipServiceConfig, load_keyring
from p2preg.gossip.wire import Keyring
from p2preg.p2p.auth import NODE_HEADER, ROUTE_HEADER, RequestSigner
from p2preg.p2p.membership import Membership
from p2preg.p2p.routing import ROLE_OWNER, owner_of
from p2preg.p2p.source import BLOBS_PATH
from p2preg.swarm.pieces import (
    JOIN_HEADER,
    LOST_HEADER,
    PARENTS_HEADER,
    decode_stripes,
    encode_stripes,
)
from tests.p2p.harness import KEY_A, ClusterNode, CountingUpstream, payload, start_node

REPO = "library/app"
CONVERGE_TIMEOUT_S = 15.0


class GossipCluster:
    def __init__(self, root: Path, upstream_url: str) -> None:
        self.root = root
        self.upstream_url = upstream_url
        self.key_file = root / "cluster.key"
        root.mkdir(parents=True, exist_ok=True)
        self.key_file.write_text(KEY_A.hex() + "\n")
        self.nodes: list[ClusterNode] = []
        self.services: dict[str, GossipService] = {}
        self.changed = asyncio.Event()

    def _on_event(self, event: Event) -> None:
        self.changed.set()

    async def add_node(self, name: str) -> ClusterNode:
        join = tuple(f"{h}:{p}" for h, p in
                     (s.gossip_address for s in self.services.values()))

        async def membership_for(host: str) -> Membership:
            service = GossipService(GossipServiceConfig(
                gossip_listen="127.0.0.1:0", join=join[:1], cluster_key_file=str(self.key_file),
                node_name=name, advertise=host, probe_interval_s=0.2, probe_timeout_s=0.1,
                gossip_interval_s=0.05, push_pull_interval_s=2.0, seed_interval_s=1.0,
                leave_timeout_s=0.2, random_seed=len(self.services)))
            await service.start()
            service.add_event_callback(self._on_event)
            self.services[name] = service
            return service

        node = await start_node(self.root, name, self.upstream_url, membership_for,
                                keyring=load_keyring(str(self.key_file)), clock=FakeClock(),
                                seed=len(self.nodes))
        node.on_stop = self.services[name].stop
        self.nodes.append(node)
        return node

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for gossip events until ``condition()`` holds (bounded)."""
        async def wait() -> None:
            while True:
                self.changed.clear()  # before the check: no event can slip in between
                if condition():
                    return
                await self.changed.wait()

        await asyncio.wait_for(wait(), CONVERGE_TIMEOUT_S)

    def converged(self) -> bool:
        names = set(self.services)
        return all({m.name for m in s.members() if m.status.value == "alive"} == names
                   for s in self.services.values())

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    fake = await CountingUpstream().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gossip_cluster(tmp_path: Path,
                         upstream: CountingUpstream) -> AsyncIterator[GossipCluster]:
    cluster = GossipCluster(tmp_path, f"http://{upstream.host}")
    yield cluster
    await cluster.stop()


async def test_peers_learn_the_holder_by_gossip_and_stream_from_it(
        gossip_cluster: GossipCluster, upstream: CountingUpstream) -> None:
    data, digest = payload(800_000)
    upstream.add(data)
    holder = await gossip_cluster.add_node("a")
    others = [await gossip_cluster.add_node("b"), await gossip_cluster.add_node("c")]
    await gossip_cluster.until(gossip_cluster.converged)
    await holder.blobs.put_bytes(data, digest)
    holder.membership.advertise_have(str(digest))
    await gossip_cluster.until(lambda: all(
        [m.name for m in n.membership.holders(str(digest))] == ["a"] for n in others))

    for node in others:
        assert await node.get_blob(REPO, str(digest)) == (200, data)
    assert upstream.blob_gets[str(digest)] == 0
    # the digest's owner streams it whole from the holder; another node takes its 4 pieces
    # from the holder (c may take some from b)
    owner = owner_of(str(digest), ["a", "b", "c"])
    swarmers = [n for n in others if n.name != owner]
    assert sum(n.p2p.server.stats.served["piece"] for n in [holder, *others]) \
        == 4 * len(swarmers)
    assert holder.p2p.server.stats.served["local"] == (1 if owner in ("b", "c") else 0)
    assert holder.p2p.server.stats.rejected == {}
    # the pullers advertised what they now hold
    await gossip_cluster.until(lambda: {m.name for m in holder.membership.holders(str(digest))}
                               == {"b", "c"})


async def test_gossip_nodes_pulling_at_once_cause_one_upstream_get(
        gossip_cluster: GossipCluster, upstream: CountingUpstream) -> None:
    data, digest = payload(1_500_000, seed=5)
    upstream.add(data)
    gate = asyncio.Event()
    upstream.holds[str(digest)] = (400_000, gate)
    nodes = [await gossip_cluster.add_node(f"g{i}") for i in range(4)]
    await gossip_cluster.until(gossip_cluster.converged)

    pulls = [asyncio.create_task(n.get_blob(REPO, str(digest))) for n in nodes]
    await asyncio.wait_for(upstream.held.wait(), 10)
    gate.set()
    assert await asyncio.gather(*pulls) == [(200, data)] * len(nodes)
    assert upstream.blob_gets[str(digest)] == 1
    owner = owner_of(str(digest), [n.name for n in nodes])
    assert next(n for n in nodes if n.name == owner).p2p.stats.fills_without_peers == 1


async def _join(owner: ClusterNode, name: str, digest: str, signer: RequestSigner,
                lost: dict[int, str] | None = None) -> dict[int, str]:
    """A real ``P2preg-Join`` by ``name`` at ``owner`` (signed as a fill's): its parents."""
    path = f"{BLOBS_PATH}{digest}"
    headers = {NODE_HEADER: name, ROUTE_HEADER: ROLE_OWNER, JOIN_HEADER: "1"}
    if lost:
        headers[LOST_HEADER] = encode_stripes(lost)
    headers.update(signer.sign("HEAD", path, headers))
    async with owner.http.head(f"http://{owner.host}{path}", headers=headers) as response:
        assert response.status == 200
        return decode_stripes(response.headers[PARENTS_HEADER])


@pytest.mark.parametrize("crash", [True, False], ids=["declared_dead", "left"])
async def test_a_member_gossip_declares_dead_or_that_left_is_never_a_parent_again(
        gossip_cluster: GossipCluster, crash: bool) -> None:
    digest = str(payload(1000, seed=9)[1])  # no fill: the owner's tracker answers joins alone
    names = [f"t{i}" for i in range(5)]
    nodes = {n: await gossip_cluster.add_node(n) for n in names}
    await gossip_cluster.until(gossip_cluster.converged)
    owner = nodes[owner_of(digest, names)]
    others = [n for n in names if n != owner.name]
    signer = RequestSigner(Keyring([KEY_A]), rng=random.Random(5))
    answers = {n: await _join(owner, n, digest, signer) for n in others}
    tracker = owner.p2p.trackers.get(digest)
    assert tracker is not None
    gone = next(n for n in others if (home := tracker.home(n)) is not None
                and tracker.children(n, home))
    children = {n for n, parents in answers.items() if gone in parents.values()}
    assert children  # a parent of somebody (from the answers themselves)

    node = nodes[gone]
    gossip_cluster.nodes.remove(node)
    node.on_stop = None
    await node.stop()
    await gossip_cluster.services[gone].stop(leave=not crash)  # crash: no leave message
    status = MemberStatus.DEAD if crash else MemberStatus.LEFT
    await gossip_cluster.until(lambda: any(
        m.name == gone and m.status == status for m in owner.membership.members()))

    # taken out of the trees when gossip said so, before any child reported it lost
    assert gone not in tracker.members()
    assert owner.p2p.trackers.leaves == 1 and owner.p2p.trackers.losses == 0
    for name in [n for n in others if n != gone] + ["late-joiner"]:
        lost = {s: gone for s, p in answers.get(name, {}).items() if p == gone}
        parents = await _join(owner, name, digest, signer, lost)
        assert gone not in parents.values() and set(parents) == {0, 1}, (name, parents)
    assert owner.p2p.trackers.losses == 0  # the children had moved already
