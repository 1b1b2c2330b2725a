"""The swarm on loopback: real nodes (``harness.Cluster``) filling piece by piece from each other,
with peers that are busy, lie, die mid-piece, and an owner killed mid-transfer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from p2preg.fetch.singleflight import FillError
from p2preg.oci.digest import Digest
from p2preg.p2p.node_glue import P2PConfig
from p2preg.p2p.routing import hrw_order, owner_of
from p2preg.swarm.pieces import (
    BUSY_HEADER,
    BUSY_SLOTS,
    HAVE_HEADER,
    LOAD_HEADER,
    SIZE_HEADER,
    Have,
    Layout,
)
from p2preg.swarm.scheduler import Scheduler, SchedulerConfig
from p2preg.swarm.uploads import UploadConfig
from tests.p2p.harness import Cluster, ClusterNode, CountingUpstream, payload, start_app
from tests.support.cluster import until

REPO = "library/app"
PIECE = 256 * 1024


@dataclass
class SwarmPeer:
    """A peer that speaks the piece protocol for one blob: it says it has every piece and
    answers any ``Range``; ``corrupt`` flips every byte; ``die_after`` cuts each answer after
    that many bytes. ``P2preg-Load``: its answers in progress, as a node's (or ``load``, fixed).
    ``busy``: it answers every request ``503`` with that ``P2preg-Busy``; ``sends_load``
    False: no ``P2preg-Load`` at all (a node of an older version). Records the ranges asked."""

    data: bytes
    corrupt: bool = False
    die_after: int | None = None
    load: int | None = None
    busy: str | None = None
    sends_load: bool = True
    ranges: list[str] = field(default_factory=list)
    askers: list[str] = field(default_factory=list)
    active: int = 0
    runner: web.AppRunner | None = None
    host: str = ""

    async def start(self) -> SwarmPeer:
        app = web.Application()
        app.router.add_get("/p2p/v1/blobs/{digest}", self._serve)
        self.runner, self.host = await start_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":  # a join (P2preg-Join): not a tracker, as an old node
            return web.Response(status=404)
        rng = request.headers.get("Range", "bytes=0-")
        self.ranges.append(rng)
        self.askers.append(request.headers.get("P2preg-Node", ""))
        first, _, last = rng.removeprefix("bytes=").partition("-")
        size = len(self.data)
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        body = self.data[start:end + 1]
        if self.corrupt:
            body = bytes(b ^ 0xFF for b in body)
        if self.busy is not None:
            refusal = web.Response(status=503, headers={
                BUSY_HEADER: self.busy, HAVE_HEADER: Have.full(Layout.for_size(size)).encode(),
                SIZE_HEADER: str(size), LOAD_HEADER: str(self.load or 0)})
            return refusal
        response = web.StreamResponse(status=206)
        response.content_length = len(body)
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        response.headers[HAVE_HEADER] = Have.full(Layout.for_size(size)).encode()
        response.headers[SIZE_HEADER] = str(size)
        self.active += 1
        try:
            return await self._send(request, response, body)
        finally:
            self.active -= 1

    async def _send(self, request: web.Request, response: web.StreamResponse,
                    body: bytes) -> web.StreamResponse:
        if self.sends_load:
            response.headers[LOAD_HEADER] = str(self.active if self.load is None else self.load)
        await response.prepare(request)
        if self.die_after is not None:
            await response.write(body[:self.die_after])
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(body)
        await response.write_eof()
        return response


def not_owner(digest: Digest, names: list[str]) -> str:
    """A name of ``names`` that is not the digest's owner (it fills by the swarm)."""
    owner = owner_of(str(digest), names)
    return next(n for n in names if n != owner)


async def kill(cluster: Cluster, node: ClusterNode) -> None:
    """Cut ``node`` off like a SIGKILL: no new connections, open ones aborted, fills stopped."""
    for site in list(node.runner.sites):
        await site.stop()
    server = node.runner.server
    if server is not None:
        for handler in list(server.connections):
            handler.force_close()
    await node.mirror.close()
    await node.p2p.close()
    cluster.nodes.remove(node)


async def scripted_peer_and_holder(cluster: Cluster, peer: SwarmPeer, name: str, data: bytes,
                                   digest: Digest) -> tuple[ClusterNode, ClusterNode, list[str]]:
    """``peer`` (advertised as holding ``digest`` under ``name``), a real holder ``good`` and
    two pullers; returns (a puller that is not the owner, the holder, every name). Rules 1-6
    (no tracker: whether a tracker makes the scripted peer a parent is the tracker's choice;
    ``tests/p2p/test_tracker.py`` has the tracker's lying and dying parents)."""
    cluster.p2p_config = P2PConfig(scheduler=SchedulerConfig(tracker=False))
    cluster.static.add(name, peer.host)
    cluster.static.set_state(name, str(digest), "have")
    names = ["good", "p1", "p2"]
    nodes = {n: await cluster.add_node(n) for n in names}
    everyone = [*names, name]
    puller = next(nodes[n] for n in ("p1", "p2") if n != owner_of(str(digest), everyone))
    good = nodes["good"]
    await good.blobs.put_bytes(data, digest)
    good.membership.advertise_have(str(digest))
    return puller, good, everyone


async def test_a_node_takes_pieces_from_several_holders_at_once(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(8 * PIECE + 1000)
    upstream.add(data)
    names = ["h1", "h2", "h3", "p1", "p2"]
    puller_name = not_owner(digest, names)
    nodes = {n: await cluster.add_node(n) for n in names}
    holders = [nodes[n] for n in ("h1", "h2", "h3") if n != puller_name]
    for node in holders:
        await node.blobs.put_bytes(data, digest)
        node.membership.advertise_have(str(digest))
    puller = nodes[puller_name]

    assert await puller.get_blob(REPO, str(digest)) == (200, data)
    served = [h.p2p.server.stats.served["piece"] for h in holders]
    assert sum(served) == 9  # 9 pieces, each asked once
    assert sum(1 for n in served if n > 0) >= 2  # from several holders
    assert upstream.blob_gets[str(digest)] == 0
    assert puller.p2p.swarm_stats.pieces + 1 == 9  # the first answer is piece 0


async def test_busy_answers_send_a_puller_to_the_peers_that_have_the_piece(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    # Caps that always bind: no idle exemption for the seed and no place freed during the test
    # (on loopback a piece takes microseconds, so with the defaults whether the seed ever says
    # busy depended on how the requests happened to overlap).
    # Rules 1-6 (the fallback of coordinated forwarding): no tracker.
    cluster.p2p_config = P2PConfig(scheduler=SchedulerConfig(tracker=False), uploads=UploadConfig(
        piece_cap=1, seed_piece_cap=1, seed_idle_below=0, seed_served_ttl_s=120.0))
    data, digest = payload(6 * PIECE)
    upstream.add(data)
    names = ["seed", "a", "b", "c", "d"]
    nodes = {n: await cluster.add_node(n) for n in names}
    seed = nodes["seed"]
    await seed.blobs.put_bytes(data, digest)
    seed.membership.advertise_have(str(digest))
    pullers = [nodes[n] for n in names[1:]]

    results = await asyncio.gather(*(p.get_blob(REPO, str(digest)) for p in pullers))
    assert results == [(200, data)] * len(pullers)
    stats = seed.p2p.server.stats.served
    # each piece left the seed once (cap 1) plus last-resort requests; the rest was relayed
    assert stats["piece_busy"] > 0
    assert stats["piece"] < 6 * (len(pullers) - 1)
    relayed = sum(p.p2p.server.stats.served["piece"] for p in pullers)
    assert relayed > 0
    assert sum(p.p2p.swarm_stats.busy for p in pullers) >= stats["piece_busy"]
    assert upstream.blob_gets[str(digest)] == 0


async def test_a_lying_peer_commits_nothing_the_client_never_gets_a_whole_wrong_body(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(8 * PIECE)
    upstream.add(data)
    liar = await SwarmPeer(data, corrupt=True).start()
    everyone: list[str] = []
    try:
        puller, _, everyone = await scripted_peer_and_holder(cluster, liar, "liar", data, digest)

        with pytest.raises(aiohttp.ClientPayloadError):  # aborted: never a complete wrong body
            await puller.get_blob(REPO, str(digest))
        fill = puller.mirror.fetcher.in_flight(digest)
        if fill is not None:
            with pytest.raises(FillError):
                await fill.wait()
        assert not puller.blobs.has(digest)
        assert "liar" in puller.p2p.penalties.skipped(str(digest))
        assert liar.ranges  # it did deliver pieces

        asked = liar.askers.count(puller.name)
        assert await puller.get_blob(REPO, str(digest)) == (200, data)
        # penalised: the puller does not ask it again (the digest's owner, which the puller's
        # second fill joins, may: it has no penalty for it yet)
        assert liar.askers.count(puller.name) == asked
    finally:
        await liar.stop()
    assert upstream.blob_gets[str(digest)] == 0 or owner_of(str(digest), everyone) == "liar"


async def test_a_peer_dying_mid_piece_is_replaced_and_the_piece_fetched_elsewhere(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    data, digest = payload(8 * PIECE)
    upstream.add(data)
    dying = await SwarmPeer(data, die_after=1000).start()
    try:
        puller, _, _ = await scripted_peer_and_holder(cluster, dying, "dying", data, digest)

        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        await dying.stop()
    assert dying.ranges  # it was asked, and broke off every time
    assert puller.p2p.swarm_stats.failed >= 1
    assert "dying" in puller.p2p.penalties.demoted()
    assert puller.blobs.has(digest)
    assert upstream.blob_gets[str(digest)] == 0


async def test_the_owner_killed_mid_fill_the_next_resumes_from_the_upstream_with_range(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    size = 12 * PIECE
    data, digest = payload(size)
    upstream.add(data)
    gate = asyncio.Event()
    upstream.holds[str(digest)] = (4 * PIECE, gate)
    names = [f"n{i}" for i in range(4)]
    nodes = {n: await cluster.add_node(n) for n in names}
    order = hrw_order(str(digest), names)
    owner, successor = nodes[order[0]], order[1]
    others = [nodes[n] for n in order[1:]]

    pulls = [asyncio.create_task(n.get_blob(REPO, str(digest))) for n in others]
    owner_pull = asyncio.create_task(owner.get_blob(REPO, str(digest)))
    await asyncio.wait_for(upstream.held.wait(), 10)
    # let the swarm take what the owner has (4 pieces), then kill the owner
    def received(node: ClusterNode) -> int:
        fill = node.mirror.fetcher.in_flight(digest)
        return 0 if fill is None else fill.received

    await until(lambda: all(received(n) >= 2 * PIECE for n in others))
    await kill(cluster, owner)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*pulls), 30)
    assert results == [(200, data)] * len(others)
    owner_pull.cancel()
    starts = upstream.blob_starts[str(digest)]
    assert starts[0] == 0 and len(starts) == 2  # the owner, then its successor once
    assert starts[1] >= 2 * PIECE  # resumed where the successor was
    assert sum(size - s for s in starts) <= 2 * size
    assert nodes[successor].p2p.swarm_stats.handed_over == 1
    for node in others:
        assert node.blobs.has(digest)


async def test_an_owner_that_holds_the_blob_unadvertised_serves_as_a_second_seed(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    """Once anyone pulled a blob its owner holds it too, before gossip says so: a puller takes
    pieces from it as well as from the advertised holder, and nothing comes from upstream."""
    names = ["a", "b", "c"]
    nodes = {n: await cluster.add_node(n) for n in names}
    owner_served = []
    for seed in range(4):
        data, digest = payload(8 * PIECE, seed=100 + seed)
        upstream.add(data)
        owner = owner_of(str(digest), names)
        holder, puller = (n for n in names if n != owner)
        await nodes[owner].blobs.put_bytes(data, digest)  # not advertised
        await nodes[holder].blobs.put_bytes(data, digest)
        nodes[holder].membership.advertise_have(str(digest))
        before = nodes[owner].p2p.server.stats.served["piece"]
        assert await nodes[puller].get_blob(REPO, str(digest)) == (200, data)
        owner_served.append(nodes[owner].p2p.server.stats.served["piece"] - before)
        assert upstream.blob_gets[str(digest)] == 0
    assert any(n > 0 for n in owner_served), owner_served


async def test_a_puller_asks_the_holder_that_advertises_fewer_uploads(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    # One request at a time, loads remembered for the whole test: once a holder's answer said
    # it runs 7 uploads, every further piece goes to the one that said 0 (by chance: 4 of 8).
    cluster.p2p_config = P2PConfig(scheduler=SchedulerConfig(max_requests=1, load_ttl_s=600))
    seed = next(s for s in range(50)
                if owner_of(str(payload(9 * PIECE, seed=s)[1]), ["me", "busy", "idle"]) != "me")
    data, digest = payload(9 * PIECE, seed=seed)
    upstream.add(data)
    busy = await SwarmPeer(data, load=7).start()
    idle = await SwarmPeer(data, load=0).start()
    try:
        for name, peer in (("busy", busy), ("idle", idle)):
            cluster.static.add(name, peer.host)
            cluster.static.set_state(name, str(digest), "have")
        puller = await cluster.add_node("me")
        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        await busy.stop()
        await idle.stop()
    assert len(busy.ranges) + len(idle.ranges) == 9
    # at most one request before its first answer told its load
    assert len(busy.ranges) <= 1, (busy.ranges, idle.ranges)
    assert upstream.blob_gets[str(digest)] == 0


async def test_a_holder_that_sends_no_load_is_not_taken_for_an_idle_one(
        cluster: Cluster, upstream: CountingUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    # "old" answers like a node of an older version, without P2preg-Load; "low" says 1 upload,
    # "high" 7. Counted as 0, "old" drew every piece once the others had answered; it counts as
    # the mean of the others' loads (4): after "low", before "high".
    told: list[tuple[str, int | None]] = []
    tell = Scheduler.on_load

    def record(self: Scheduler, peer: str, load: int | None, now: float) -> None:
        told.append((peer, load))
        tell(self, peer, load, now)

    monkeypatch.setattr(Scheduler, "on_load", record)
    cluster.p2p_config = P2PConfig(scheduler=SchedulerConfig(max_requests=1, load_ttl_s=600))
    names = ["me", "old", "low", "high"]
    seed = next(s for s in range(50)
                if owner_of(str(payload(9 * PIECE, seed=s)[1]), names) != "me")
    data, digest = payload(9 * PIECE, seed=seed)
    upstream.add(data)
    peers = {"old": SwarmPeer(data, sends_load=False), "low": SwarmPeer(data, load=1),
             "high": SwarmPeer(data, load=7)}
    try:
        for name, peer in peers.items():
            await peer.start()
            cluster.static.add(name, peer.host)
            cluster.static.set_state(name, str(digest), "have")
        puller = await cluster.add_node("me")
        assert await puller.get_blob(REPO, str(digest)) == (200, data)
    finally:
        for peer in peers.values():
            await peer.stop()
    asked = {name: len(peer.ranges) for name, peer in peers.items()}
    assert sum(asked.values()) == 9 and upstream.blob_gets[str(digest)] == 0
    assert {load for peer, load in told if peer == "old"} == {None}
    assert {load for peer, load in told if peer == "low"} == {1}
    assert asked["old"] <= 2 and asked["high"] <= 1, asked  # before every load was known
    assert asked["low"] >= 6, asked


async def test_a_slots_busy_answer_backs_the_peer_off_for_every_piece(
        cluster: Cluster, upstream: CountingUpstream) -> None:
    # "full" advertises no uploads (so it ranks first) but answers every piece busy for want
    # of slots; "idle" serves. With slots_busy_backoff_s the puller asks "full" once and then
    # not for any piece within the backoff; a piece-busy answer (the control) backs off only
    # that piece, so "full" is asked again for the next ones (the second puller, "me2", may
    # get them from "me" too).
    seed = next(s for s in range(50)
                if owner_of(str(payload(9 * PIECE, seed=s)[1]), ["me", "full", "idle"]) != "me")
    data, digest = payload(9 * PIECE, seed=seed)
    upstream.add(data)
    asked = {}
    for name, busy in (("me", BUSY_SLOTS), ("me2", "piece")):
        cluster.p2p_config = P2PConfig(scheduler=SchedulerConfig(  # rule 5: no tracker
            max_requests=1, load_ttl_s=600, slots_busy_backoff_s=600, tracker=False))
        full = await SwarmPeer(data, load=0, busy=busy).start()
        idle = await SwarmPeer(data, load=7).start()
        try:
            for peer_name, peer in (("full", full), ("idle", idle)):
                cluster.static.add(peer_name, peer.host)
                cluster.static.set_state(peer_name, str(digest), "have")
            puller = await cluster.add_node(name)
            assert await puller.get_blob(REPO, str(digest)) == (200, data)
        finally:
            await full.stop()
            await idle.stop()
        asked[busy] = len(full.ranges)
        if busy == BUSY_SLOTS:
            assert len(idle.ranges) == 9  # every piece from "idle" once "full" said slots
    assert asked[BUSY_SLOTS] == 1
    assert asked["piece"] > 1, asked
    assert upstream.blob_gets[str(digest)] == 0
