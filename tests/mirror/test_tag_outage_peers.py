"""Tags while the upstream is down: the node's own confirmation survives a restart, and a node
that never pulled a tag takes it from its peers' confirmations (manifest verified by digest)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci.digest import parse_digest
from p2preg.pull.mirror import MirrorContentSource, create_mirror
from p2preg.registry.app import create_registry_app
from p2preg.registry.context import RegistryContext
from p2preg.registry.metrics import RegistryMetrics
from p2preg.registry.namespace import namespace_middleware
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore, TagConfirmation
from p2preg.storage.uploads import UploadManager
from tests.p2p.harness import Cluster, ClusterNode, CountingUpstream, start_app
from tests.support.cluster import mirror_cluster, until
from tests.upstream.fakes import FakeUpstream, StepClock

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": OCI_MANIFEST}
REPO = "library/app"
CACHE_REPO = "docker.io/library/app"
T0 = 1_700_000_000.0
OUTAGE_ANSWER_S = 5.0  # what the issue allows for an outage error


def image_manifest(seed: int) -> bytes:
    config = "sha256:" + f"{seed:064x}"
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": config, "size": 2},
                       "layers": []}).encode()


# -- one node, restarted ---------------------------------------------------------------------


@dataclass
class Running:
    url: str
    meta: MetadataStore
    content: MirrorContentSource
    metrics: RegistryMetrics
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.content.close()
        self.meta.close()

    def stale_served(self, source: str) -> float:
        value = self.metrics.registry.get_sample_value("p2preg_stale_tags_served_total",
                                                       {"source": source})
        return 0.0 if value is None else value


async def start_mirror(root: Path, upstream_url: str, wall: StepClock, *,
                       tag_max_stale_s: float) -> Running:
    """A mirror node over ``root`` (kept across restarts); upstream retries take no real time."""
    layout = StoreLayout(root)
    layout.ensure()
    blobs = BlobStore(layout)
    blobs.recover()
    meta = MetadataStore(layout.db_path, clock=wall)
    metrics = RegistryMetrics()
    content = create_mirror(Config(upstream=(f"docker.io={upstream_url}",),
                                   tag_max_stale_s=tag_max_stale_s),
                            blobs, meta, metrics=metrics, clock=StepClock(), wall_clock=wall,
                            rng=random.Random(7))
    ctx = RegistryContext(blobs=blobs, meta=meta, uploads=UploadManager(layout, blobs, meta, wall),
                          clock=wall, read_only=True, content=content)
    runner = web.AppRunner(create_registry_app(ctx, middlewares=[namespace_middleware]))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Running(f"http://127.0.0.1:{runner.addresses[0][1]}", meta, content, metrics, runner)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_tag(http: aiohttp.ClientSession, url: str, tag: str) -> tuple[int, str, bytes]:
    async with http.get(f"{url}/v2/{REPO}/manifests/{tag}", headers=ACCEPT) as response:
        return response.status, response.headers.get("Docker-Content-Digest", ""), \
            await response.read()


async def confirmed_then_restarted_at(tmp_path: Path, fake: FakeUpstream,
                                      http: aiohttp.ClientSession, restart_at: float
                                      ) -> tuple[Running, str]:
    """Cache ``latest`` at T0, confirm it again at T0+3000, stop the node and the upstream,
    start the node again at ``restart_at`` with ``tag_max_stale_s`` = 3600."""
    digest = fake.add_manifest(REPO, "latest", json.loads(image_manifest(1)))
    wall = StepClock(start=T0)
    node = await start_mirror(tmp_path / "node", fake.url, wall, tag_max_stale_s=3600)
    try:
        assert (await get_tag(http, node.url, "latest"))[:2] == (200, digest)
        wall.t = T0 + 3000
        assert (await get_tag(http, node.url, "latest"))[:2] == (200, digest)
    finally:
        await node.stop()
    await fake.stop()
    wall.t = restart_at
    return await start_mirror(tmp_path / "node", fake.url, wall, tag_max_stale_s=3600), digest


async def test_after_a_restart_the_last_confirmation_not_the_first_caching_counts(
        tmp_path: Path, fake_upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    # First cached at T0 (over an hour before the restart), confirmed 1000 s before it.
    node, digest = await confirmed_then_restarted_at(tmp_path, fake_upstream, http, T0 + 4000)
    try:
        status, served, _ = await get_tag(http, node.url, "latest")
        assert (status, served) == (200, digest)
        assert node.stale_served("local") == 1
    finally:
        await node.stop()


async def test_after_a_restart_a_confirmation_older_than_the_limit_is_refused(
        tmp_path: Path, fake_upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    node, _ = await confirmed_then_restarted_at(tmp_path, fake_upstream, http, T0 + 3000 + 3601)
    try:
        status, _, body = await get_tag(http, node.url, "latest")
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        assert node.stale_served("local") == 0
    finally:
        await node.stop()


# -- three nodes with gossip -----------------------------------------------------------------


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


def holds(node: Node, digest: str, holder: str) -> bool:
    return any(m.name == holder for m in node.gossip.holders(digest))


def confirmation(node: Node, tag: str) -> TagConfirmation | None:
    mirror = node.p2p.mirror
    assert mirror is not None
    result: TagConfirmation | None = mirror.last_confirmed("docker.io", REPO, tag)
    return result


def metric(node: Node, name: str, **labels: str) -> float:
    value = node.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def pulled_on_n0_then_upstream_down(http: aiohttp.ClientSession, cluster: list[Node],
                                          upstream: CountingUpstream, tag: str, *, seed: int
                                          ) -> tuple[bytes, str, Counter[tuple[str, str]]]:
    """``repo:tag`` pulled by tag on n0 and seen held by n0 everywhere; then the upstream is
    stopped. Returns the manifest, its digest and the upstream's request counts at the stop."""
    body = image_manifest(seed)
    digest = upstream.add_manifest(tag, OCI_MANIFEST, body)
    assert await get_tag(http, cluster[0].url, tag) == (200, digest, body)
    await until(lambda: all(holds(n, digest, "n0") for n in cluster[1:]))
    seen = Counter(upstream.manifest_requests)
    await upstream.stop()
    return body, digest, seen


async def timed(request: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = await request
    return time.monotonic() - started, result


async def test_a_node_that_never_pulled_a_tag_serves_it_from_a_peer_while_the_upstream_is_down(
        cluster: list[Node], upstream: CountingUpstream, http: aiohttp.ClientSession) -> None:
    first, _, new = cluster
    body, digest, at_stop = await pulled_on_n0_then_upstream_down(http, cluster, upstream, "v1",
                                                                  seed=1)
    elapsed, answer = await timed(get_tag(http, new.url, "v1"))
    assert answer == (200, digest, body)  # the bytes n0 got from the upstream
    assert elapsed < OUTAGE_ANSWER_S
    # Only n0 ever asked the upstream (a HEAD and a GET); new's own HEAD during the outage
    # found nothing listening, and nothing else of new's went there.
    assert at_stop == {("HEAD", "v1"): 1, ("GET", "v1"): 1}
    assert upstream.manifest_requests == at_stop
    assert new.layout.blob_path(parse_digest(digest)).read_bytes() == body  # cached on new
    assert metric(new, "p2preg_p2p_tag_lookups_total", outcome="answered") == 1
    assert metric(new, "p2preg_stale_tags_served_total", source="peer") == 1
    assert metric(first, "p2preg_p2p_served_total", kind="tag") == 1
    # new recorded n0's confirmation time, not its own "now": staleness is not laundered.
    assert confirmation(new, "v1") == confirmation(first, "v1")
    # From now on the tag is the node's own last known digest: no second peer lookup.
    assert await get_tag(http, new.url, "v1") == (200, digest, body)
    assert new.p2p.stats.tag_lookups == 1
    assert metric(new, "p2preg_stale_tags_served_total", source="local") == 1


async def test_a_peer_whose_manifest_does_not_match_the_digest_it_named_is_rejected(
        cluster: list[Node], upstream: CountingUpstream, http: aiohttp.ClientSession) -> None:
    first, _, new = cluster
    body, digest, _ = await pulled_on_n0_then_upstream_down(http, cluster, upstream, "v2",
                                                            seed=2)
    # n0's copy rots on disk: what it names for the tag no longer matches the bytes it serves.
    first.layout.blob_path(parse_digest(digest)).write_bytes(body.replace(b"2", b"3", 1))
    elapsed, (status, _, error) = await timed(get_tag(http, new.url, "v2"))
    assert status == 503 and elapsed < OUTAGE_ANSWER_S
    assert json.loads(error)["errors"][0]["code"] == "UNAVAILABLE"
    assert new.p2p.penalties.wrong_bytes_total == 1
    assert confirmation(new, "v2") is None
    assert not new.layout.blob_path(parse_digest(digest)).exists()
    assert metric(new, "p2preg_stale_tags_served_total", source="peer") == 0


async def test_with_no_peer_knowing_the_tag_the_outage_error_comes_within_five_seconds(
        cluster: list[Node], upstream: CountingUpstream, http: aiohttp.ClientSession) -> None:
    new = cluster[2]
    await upstream.stop()
    elapsed, (status, _, error) = await timed(get_tag(http, new.url, "never-pulled"))
    assert status == 503 and elapsed < OUTAGE_ANSWER_S
    message = json.loads(error)["errors"][0]["message"]
    assert message.startswith("upstream docker.io: ")
    assert new.p2p.stats.tag_lookups == 1 and new.p2p.stats.tag_lookups_answered == 0
    assert sum(n.p2p.server.stats.served["tag_unknown"] for n in cluster[:2]) == 2


# -- scripted peers --------------------------------------------------------------------------


@dataclass
class ScriptedPeer:
    """A peer endpoint: answers tag questions with ``tag_answer`` (or never, when ``silent``)
    and serves the manifests in ``holds`` by digest; records the digests asked for."""

    tag_answer: dict[str, object] | None = None
    holds: dict[str, bytes] = field(default_factory=dict)
    silent: bool = False
    blob_requests: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    host: str = ""

    async def start(self) -> ScriptedPeer:
        app = web.Application()
        app.router.add_get("/p2p/v1/tags/{rest:.+}", self._tag)
        app.router.add_get("/p2p/v1/blobs/{digest}", self._blob)
        self.runner, self.host = await start_app(app)
        return self

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _tag(self, request: web.Request) -> web.Response:
        if self.silent:
            await self.released.wait()
        if self.tag_answer is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.json_response(self.tag_answer)

    async def _blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        self.blob_requests.append(digest)
        body = self.holds.get(digest)
        if body is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=body, headers={"Docker-Content-Digest": digest},
                            content_type="application/octet-stream")


def closed_port_url() -> str:
    """An upstream that is down: nothing listens on this loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def lone(tmp_path: Path) -> AsyncIterator[tuple[Cluster, ClusterNode, list[ScriptedPeer]]]:
    """One real mirror node whose upstream is down, in a static cluster; the test adds
    scripted peers with ``add_peer``."""
    cluster = Cluster(tmp_path, closed_port_url())
    node = await cluster.add_node("new")
    peers: list[ScriptedPeer] = []
    try:
        yield cluster, node, peers
    finally:
        for peer in peers:
            await peer.stop()
        await cluster.stop()


async def add_peer(cluster: Cluster, peers: list[ScriptedPeer], name: str,
                   peer: ScriptedPeer) -> ScriptedPeer:
    await peer.start()
    peers.append(peer)
    cluster.static.add(name, peer.host)
    for digest in peer.holds:
        cluster.static.set_state(name, digest, "have")
    return peer


def held(seed: int) -> tuple[str, bytes]:
    body = image_manifest(seed)
    return "sha256:" + hashlib.sha256(body).hexdigest(), body


async def get_from(node: ClusterNode, tag: str) -> tuple[int, str, bytes]:
    return await get_tag(node.http, f"http://{node.host}", tag)


async def test_the_freshest_answer_within_the_limit_wins_and_older_ones_are_never_fetched(
        lone: tuple[Cluster, ClusterNode, list[ScriptedPeer]]) -> None:
    cluster, node, peers = lone
    (old, old_body), (fresh, fresh_body), (mid, mid_body) = held(1), held(2), held(3)
    too_old = await add_peer(cluster, peers, "too-old", ScriptedPeer(
        {"digest": old, "confirmed_at": T0 - 86400 - 1}, {old: old_body}))
    freshest = await add_peer(cluster, peers, "freshest", ScriptedPeer(
        {"digest": fresh, "confirmed_at": T0 - 60}, {fresh: fresh_body}))
    older = await add_peer(cluster, peers, "older", ScriptedPeer(
        {"digest": mid, "confirmed_at": T0 - 3600}, {mid: mid_body}))
    assert await get_from(node, "v1") == (200, fresh, fresh_body)
    assert freshest.blob_requests == [fresh]
    assert too_old.blob_requests == [] and older.blob_requests == []
    assert node.mirror.last_confirmed("docker.io", REPO, "v1") == TagConfirmation(fresh, T0 - 60)


async def test_a_digest_no_peer_can_deliver_gives_way_to_the_next_freshest_answer(
        lone: tuple[Cluster, ClusterNode, list[ScriptedPeer]]) -> None:
    cluster, node, peers = lone
    phantom, _ = held(4)
    real, real_body = held(5)
    await add_peer(cluster, peers, "phantom", ScriptedPeer(
        {"digest": phantom, "confirmed_at": T0 - 10}))
    await add_peer(cluster, peers, "real", ScriptedPeer(
        {"digest": real, "confirmed_at": T0 - 20}, {real: real_body}))
    assert await get_from(node, "v1") == (200, real, real_body)
    assert node.mirror.tags_from_peers_total == 1


async def test_a_lying_peer_is_rejected_and_penalised(
        lone: tuple[Cluster, ClusterNode, list[ScriptedPeer]]) -> None:
    cluster, node, peers = lone
    digest, body = held(6)
    await add_peer(cluster, peers, "liar", ScriptedPeer(
        {"digest": digest, "confirmed_at": T0 - 10}, {digest: body + b" "}))
    status, _, _ = await get_from(node, "v1")
    assert status == 503
    assert node.p2p.penalties.wrong_bytes_total == 1
    assert node.mirror.last_confirmed("docker.io", REPO, "v1") is None
    assert not node.blobs.has(parse_digest(digest))


async def test_a_silent_peer_costs_one_bounded_wait(
        lone: tuple[Cluster, ClusterNode, list[ScriptedPeer]]) -> None:
    cluster, node, peers = lone
    await add_peer(cluster, peers, "silent", ScriptedPeer(silent=True))
    elapsed, (status, _, error) = await timed(get_from(node, "v1"))
    assert status == 503 and elapsed < OUTAGE_ANSWER_S
    assert json.loads(error)["errors"][0]["code"] == "UNAVAILABLE"
    assert node.p2p.penalties.failures_total == 1
