"""Wires membership, the mirror and the peer endpoint of one node together.

Owns: ``P2PConfig`` and ``P2P``, the one object ``node.py`` builds for the p2p path::

    p2p = P2P(gossip, blobs, keyring=load_keyring(config.cluster_key_file),
              clock=MonotonicClock(), wall_clock=WallClock())
    mirror = create_mirror(config, blobs, meta, ..., peer_sources=p2p.peer_sources)
    p2p.attach(mirror)
    app.add_routes(p2p.routes())                # GET/HEAD /p2p/v1/blobs/<digest>
    await p2p.start()                           # client session; advertises committed blobs
    ...
    await p2p.close()                           # before mirror.close()

What it does:
- ``peer_sources(digest, registry, repository)`` (the mirror calls it when it starts a fill):
  asks membership for the live members, holders and fetchers. A node that is not the digest's
  owner gets one ``swarm_source.SwarmSource`` (pieces from many peers at once; its view of
  the peers is rebuilt from membership whenever it asks, without the peers it saw die). The
  owner, and a node filling for a peer, get today's sequential sources: ``routing.plan_route``
  chooses (penalties applied), one ``PeerBlobSource`` per choice. Either way the owner is
  told the upstream registry and repository; the mirror appends the upstream. It also
  advertises ``fetching`` and watches the fill: ``have`` once committed, ``drop`` on failure,
  and a penalty for every peer that delivered bytes to a fill whose digest did not match, plus a
  wrong-bytes report to it (``suspect.report_suspect``; the route is in ``routes()`` when the
  node gives ``verify_blob``).
- Trackers (coordinated forwarding): ``trackers`` answers the joins of the digests this node
  owns; a member that gossip declares dead or that leaves is taken out of every tree at once
  (the membership's ``add_event_callback``, when it has one).
- The server's ``OwnerFill``: asked as owner, the node joins or starts its mirror fill for the
  named upstream and repository, with holders as its only peers (``acting_for_peer``).
- Tags during an upstream outage: ``peer_tag`` (the mirror's hook) asks up to
  ``P2PConfig.tag_peers`` live peers, nearest first (``nearest_peers``), for their own last
  confirmation of a tag (``tags.ask_peers``); the server's ``TagLookup`` answers such questions
  from the mirror's own records (``MirrorContentSource.last_confirmed``).

Must not import ``p2preg.node`` or ``p2preg.cli``; the gossip service comes in through the
``Membership`` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from p2preg.clock import Clock, MonotonicClock, WallClock
from p2preg.fetch.singleflight import Fill, FillError
from p2preg.fetch.sources import BlobSource
from p2preg.gossip.events import Event, MemberDead, MemberLeft
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.wire import Keyring
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.p2p.auth import DEFAULT_MAX_SKEW_S, RequestSigner, RequestVerifier
from p2preg.p2p.membership import Membership, as_peers
from p2preg.p2p.penalties import DEFAULT_FAILURE_S, DEFAULT_WRONG_BYTES_S, PenaltyBox
from p2preg.p2p.routing import (
    DEFAULT_MAX_PEERS,
    ROLE_FETCHER,
    ROLE_HOLDER,
    ROLE_OWNER,
    Candidate,
    Peer,
    RoutePlan,
    owner_of,
    plan_route,
)
from p2preg.p2p.server import P2PServer
from p2preg.p2p.source import BlobOrigin, Ledger, PeerBlobSource, PeerClientConfig
from p2preg.p2p.suspect import Verify, add_suspect_route, report_suspect
from p2preg.p2p.tags import (
    DEFAULT_TAG_PEERS,
    DEFAULT_TAG_TIMEOUT_S,
    TagAnswer,
    TagAsk,
    ask_peers,
    tag_path,
)
from p2preg.pull.mirror import MirrorContentSource, current_namespace
from p2preg.pull.swarm_source import SwarmRegistry, SwarmSource, SwarmStats, SwarmView
from p2preg.registry.content import BlobContent
from p2preg.registry.ranges import RangeSpec
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import TagConfirmation
from p2preg.swarm.scheduler import ROLE_MEMBER, SchedulerConfig
from p2preg.swarm.tracker import TrackerConfig, TrackerRegistry
from p2preg.swarm.uploads import UploadConfig, UploadPolicy
from p2preg.upstream.client import READ_BUFFER_BYTES
from p2preg.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

#: Digests advertised per call at start-up (~15 us each in the gossip core: ~30 ms per batch),
#: with the event loop free in between so probes from peers keep being answered.
ADVERTISE_BATCH = 2048

_acting_for_peer: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "p2preg_p2p_acting_for_peer", default=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class P2PConfig:
    """Tuning of the p2p path (defaults suit a LAN cluster)."""

    max_peers: int = DEFAULT_MAX_PEERS
    client: PeerClientConfig = field(default_factory=PeerClientConfig)
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    wrong_bytes_penalty_s: float = DEFAULT_WRONG_BYTES_S
    failure_penalty_s: float = DEFAULT_FAILURE_S
    connections_per_peer: int = 8
    advertise_committed_at_start: bool = True
    tag_peers: int = DEFAULT_TAG_PEERS
    """How many live peers a tag is asked of during an upstream outage."""
    tag_timeout_s: float = DEFAULT_TAG_TIMEOUT_S
    """The bound of one such question (the peers are asked at once)."""
    swarm: bool = True
    """Non-owners fill piece by piece from many peers (False: one peer after another)."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    uploads: UploadConfig = field(default_factory=UploadConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """The trackers this node keeps as a digest's owner (``swarm.tracker``); its ``stripes``
    follow ``scheduler.stripes``."""


@dataclass
class GlueStats:
    manifests_from_peers: int = 0
    fills_with_peers: int = 0
    fills_without_peers: int = 0
    wrong_bytes_fills: int = 0
    tag_lookups: int = 0
    tag_lookups_answered: int = 0
    last_plan: RoutePlan | None = None


class P2P:
    """The p2p path of one node (see the module docstring for the wiring)."""

    def __init__(
        self,
        membership: Membership,
        blobs: BlobStore,
        *,
        keyring: Keyring | None = None,
        config: P2PConfig | None = None,
        clock: Clock | None = None,
        wall_clock: Clock | None = None,
        rng: random.Random | None = None,
        peer_tls: ssl.SSLContext | None = None,
        verify_blob: Verify | None = None,
    ) -> None:
        self.membership = membership
        self._verify_blob = verify_blob  # re-hash a blob a peer reported (suspect.py)
        self.config = config or P2PConfig()
        # A node serving HTTPS fetches from its peers over HTTPS, verified with ``peer_tls``.
        self._peer_tls = peer_tls
        if peer_tls is not None:
            self.config = replace(self.config, client=replace(self.config.client, scheme="https"))
        self._blobs = blobs
        wall = self._wall = wall_clock or WallClock()
        self.penalties = PenaltyBox(clock or MonotonicClock(),
                                    wrong_bytes_s=self.config.wrong_bytes_penalty_s,
                                    failure_s=self.config.failure_penalty_s)
        self._signer = None if keyring is None else RequestSigner(keyring, clock=wall, rng=rng)
        verifier = None if keyring is None else RequestVerifier(
            keyring, clock=wall, max_skew_s=self.config.max_skew_s)
        self._rng = rng or random.Random()
        self.swarms = SwarmRegistry()
        self.swarm_stats = SwarmStats()
        self._swarm_fills: set[Digest] = set()
        uploads = UploadPolicy(self.config.uploads, random.Random(self._rng.random()))
        #: the trackers of the digests this node is asked to track as their owner (joins)
        self.trackers = TrackerRegistry(
            membership.node_name, replace(self.config.tracker,
                                          stripes=self.config.scheduler.stripes),
            random.Random(membership.node_name), holders=self._holder_names,
            serves=self._serves)
        # A member gossip declares dead (or that left) leaves every tree at once (rule 6): no
        # later joiner is given it, its children move on their next join instead of waiting
        # for one of them to report it lost. (``StaticMembership`` has no events.)
        add_event_callback = getattr(membership, "add_event_callback", None)
        if add_event_callback is not None:
            add_event_callback(self._on_member_event)
        self.server = P2PServer(blobs, fills=self._in_flight, owner_fill=self._owner_fill,
                                verifier=verifier, tags=self._own_tag, uploads=uploads,
                                swarms=self.swarms.get, long_polls=self._is_root,
                                trackers=self.trackers)
        self.stats = GlueStats()
        self._mirror: MirrorContentSource | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    # -- wiring ----------------------------------------------------------------------------------

    def attach(self, mirror: MirrorContentSource) -> None:
        """The mirror whose fills peers may follow and which fills as owner; its manifests come
        from holders first and are advertised once stored."""
        self._mirror = mirror
        mirror.peer_manifest = self.peer_manifest
        mirror.peer_tag = self.peer_tag
        mirror.on_manifest_stored = lambda digest: self.membership.advertise_have(str(digest))

    @property
    def mirror(self) -> MirrorContentSource | None:
        """The attached mirror (None before ``attach``)."""
        return self._mirror

    async def peer_manifest(self, digest: Digest, max_bytes: int) -> bytes | None:
        """A manifest by digest from a live peer that holds it (nearest first, penalties
        applied), checked against the digest; None when no holder could give it.

        Only holders are asked (the plan's order: nearest first, the digest's owner among them
        when it holds it): a manifest is small, and a peer without it would have to fetch it from
        the upstream, which the mirror does itself right after.
        """
        plan, holding, _ = self._plan(digest)
        for planned in plan.candidates:
            if planned.peer.name not in holding:
                continue  # a fetcher or an owner without it: the mirror asks the upstream itself
            candidate = Candidate(planned.peer, ROLE_HOLDER)  # asked for what it has, never a fill
            source = PeerBlobSource(
                self._client(), candidate, node_name=self.membership.node_name,
                signer=self._signer, config=self.config.client,
                on_failure=lambda peer, reason: self.penalties.failed(peer))  # fmt: skip
            try:
                body = await _read_whole(source, digest, max_bytes)
            except (OSError, UpstreamError) as exc:
                log.info("manifest %s from peer %s failed: %s", digest, candidate.peer.name, exc)
                continue
            if body is None:
                continue
            if Digest.of_bytes(body, digest.algorithm) != digest:
                log.warning("penalising peer %s: wrong bytes for manifest %s",
                            candidate.peer.name, digest)  # fmt: skip
                self.penalties.wrong_bytes(candidate.peer.name, str(digest))
                self._report_wrong_bytes(candidate.peer.name, digest)
                continue
            self.stats.manifests_from_peers += 1
            return body
        return None

    async def peer_tag(self, registry: str, repository: str, tag: str) -> list[TagAnswer]:
        """What up to ``tag_peers`` live peers (nearest first, recently failing ones last) last
        confirmed for ``registry``'s ``repository:tag``, freshest first; every question bounded
        by ``tag_timeout_s``, a failing peer penalised. Never raises; [] when nobody knows."""
        try:
            path = tag_path(registry, repository, tag)
            members = self.membership.members()
        except (RegistryError, RuntimeError) as exc:  # a name peers would refuse; no gossip
            log.info("not asking peers for %s/%s:%s: %s", registry, repository, tag, exc)
            return []
        peers = nearest_peers(members, self.membership.node_name, limit=self.config.tag_peers,
                              demoted=self.penalties.demoted())
        ask = TagAsk(node_name=self.membership.node_name, signer=self._signer,
                     scheme=self.config.client.scheme, timeout_s=self.config.tag_timeout_s,
                     max_skew_s=self.config.max_skew_s)
        answers = await ask_peers(self._client(), peers, path, ask, now=self._wall.now,
                                  on_failure=lambda peer, reason: self.penalties.failed(peer))
        self.stats.tag_lookups += 1
        if answers:
            self.stats.tag_lookups_answered += 1
        return answers

    def _own_tag(self, registry: str, repository: str, tag: str) -> TagConfirmation | None:
        return None if self._mirror is None else self._mirror.last_confirmed(registry,
                                                                             repository, tag)

    def routes(self) -> web.RouteTableDef:
        table = self.server.routes()
        if self._verify_blob is not None:
            add_suspect_route(table, self.server.authenticate, self._verify_blob)
        return table

    def _report_wrong_bytes(self, peer_name: str, digest: Digest) -> None:
        """Tell ``peer_name`` its bytes for ``digest`` were wrong (in the background): it
        re-hashes its copy at once and drops it when rotten (suspect.py)."""
        addresses = [m.http_addr for m in self.membership.members()
                     if m.name == peer_name and m.http_addr]
        if not addresses:
            return
        base_url = f"{self.config.client.scheme}://{addresses[0]}"

        async def tell() -> None:
            await report_suspect(self._client(), base_url, digest,
                                 node_name=self.membership.node_name, signer=self._signer)

        task = asyncio.get_running_loop().create_task(tell())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def start(self) -> None:
        """Open the peer client session; advertise every committed blob."""
        self._client()
        if self.config.advertise_committed_at_start:
            digests = await asyncio.to_thread(lambda: [str(d) for d in self._blobs.digests()])
            # A node may restart with 50,000 cached blobs: advertise them in batches, one gossip
            # flush each, yielding to the event loop in between so that probes from peers keep
            # being answered (each batch costs ~15 us per digest).
            for first in range(0, len(digests), ADVERTISE_BATCH):
                self.membership.advertise_have_many(digests[first : first + ADVERTISE_BATCH])
                await asyncio.sleep(0)

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0,
                                             limit_per_host=self.config.connections_per_peer,
                                             ssl=self._peer_tls if self._peer_tls else True)
            # Like the upstream client's: up to 4 MiB of a body may wait in memory before the
            # socket is paused (aiohttp's 64 KiB default pauses and resumes it constantly).
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  read_bufsize=READ_BUFFER_BYTES)
        return self._session

    def _on_member_event(self, event: Event) -> None:
        if isinstance(event, MemberDead | MemberLeft):
            self.trackers.leave(event.name)

    # -- the mirror's side -----------------------------------------------------------------------

    def plan(self, digest: Digest) -> RoutePlan:
        """The routing decision for ``digest`` now (membership + penalties)."""
        return self._plan(digest)[0]

    def _plan(self, digest: Digest) -> tuple[RoutePlan, set[str], set[str]]:
        """The plan, and the names of the peers that hold, and that fetch, ``digest``."""
        key = str(digest)
        membership = self.membership
        try:
            live = as_peers(membership.members())
            holders = as_peers(membership.holders(key))
            fetchers = as_peers(membership.fetchers(key))
        except RuntimeError:  # gossip not running (yet, or any more): upstream only
            live, holders, fetchers = [], [], []
        plan = plan_route(key, self_name=membership.node_name, live=live, holders=holders,
                          fetchers=fetchers, skipped=self.penalties.skipped(key),
                          demoted=self.penalties.demoted(),
                          acting_for_peer=_acting_for_peer.get(),
                          max_peers=self.config.max_peers)
        return plan, {p.name for p in holders}, {p.name for p in fetchers}

    def peer_sources(self, digest: Digest, registry: str, repository: str) -> list[BlobSource]:
        """The peer sources of a new fill of ``digest`` from ``registry``/``repository`` (the
        mirror appends the upstream; an owner is told the two so it can fill for us)."""
        plan = self._plan(digest)[0]
        self.stats.last_plan = plan
        origin = BlobOrigin(registry, repository)
        ledger = Ledger()
        sources: list[BlobSource] = []
        if self.config.swarm and not plan.self_is_owner and not _acting_for_peer.get() \
                and plan.owner is not None:
            self._swarm_fills.add(digest)
            sources.append(SwarmSource(
                self._client(), lambda gone: self._swarm_view(digest, gone),
                node_name=self.membership.node_name, registry=self.swarms,
                signer=self._signer, origin=origin, config=self.config.client,
                scheduler=self.config.scheduler, rng=random.Random(self._rng.random()),
                ledger=ledger, on_failure=lambda peer, reason: self.penalties.failed(peer),
                stats=self.swarm_stats, upstream_busy=self._upstream_busy))
        for candidate in () if sources else plan.candidates:
            sources.append(PeerBlobSource(
                self._client(), candidate, node_name=self.membership.node_name,
                signer=self._signer, origin=origin, config=self.config.client, ledger=ledger,
                on_failure=lambda peer, reason: self.penalties.failed(peer)))
        if sources:
            self.stats.fills_with_peers += 1
        else:
            self.stats.fills_without_peers += 1
        self.membership.advertise_fetching(str(digest))
        asyncio.get_running_loop().call_soon(self._watch, digest, ledger)
        return sources

    def _swarm_view(self, digest: Digest, gone: frozenset[str]) -> SwarmView:
        """The peers of ``digest`` for a swarm fill: every live member with an address but
        the ``gone`` ones and those with wrong bytes for it, by role; the owner among them."""
        key = str(digest)
        me = self.membership.node_name
        skipped = self.penalties.skipped(key) | gone
        try:
            live = [p for p in as_peers(self.membership.members()) if p.name not in skipped]
            holders = {p.name for p in as_peers(self.membership.holders(key))}
            fetchers = {p.name for p in as_peers(self.membership.fetchers(key))}
        except RuntimeError:
            live, holders, fetchers = [], set(), set()
        owner = owner_of(key, [p.name for p in live if p.http_addr] + [me])
        roles: dict[str, str] = {}
        addrs: dict[str, str] = {}
        for p in live:
            if p.name == me or not p.http_addr:
                continue
            addrs[p.name] = p.http_addr
            roles[p.name] = (ROLE_HOLDER if p.name in holders else ROLE_OWNER
                             if p.name == owner else ROLE_FETCHER if p.name in fetchers
                             else ROLE_MEMBER)
        return SwarmView(roles, addrs, owner)

    def _holder_names(self, digest: str) -> list[str]:
        """The live members gossip says hold ``digest`` whole (complete nodes of its tracker)."""
        try:
            return [p.name for p in as_peers(self.membership.holders(digest)) if p.http_addr]
        except RuntimeError:
            return []

    def _serves(self, digest: str) -> bool:
        """Whether this node holds or fills ``digest`` (its tracker's root may take children)."""
        key = parse_digest(digest)
        return self._blobs.has(key) or self._in_flight(key) is not None

    def _upstream_busy(self) -> bool:
        """Whether a fill of this node streams from the upstream now (its swarm fills then
        ask fewer pieces at once: ``swarm.scheduler`` rule 1)."""
        mirror = self._mirror
        return mirror is not None and any(
            f.source_kind == "upstream" for f in mirror.fetcher.fills_in_flight())

    def _is_root(self, digest: Digest) -> bool:
        """Whether this node's fill of ``digest`` streams in order from the upstream or a
        holder (it may make peers wait for bytes), rather than from a swarm."""
        if digest not in self._swarm_fills:
            return True
        fill = self._in_flight(digest)
        return fill is not None and fill.source_kind == "upstream"

    def _watch(self, digest: Digest, ledger: Ledger) -> None:
        # Runs one loop turn after ``peer_sources``: the mirror creates the fill synchronously
        # right after asking for its sources, so it is registered with the fetcher by now.
        fill = self._in_flight(digest)
        if fill is None:
            self._swarm_fills.discard(digest)
            self._settled(digest, ok=self._blobs.has(digest))
            return
        task = asyncio.get_running_loop().create_task(self._await_fill(fill, ledger))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _await_fill(self, fill: Fill, ledger: Ledger) -> None:
        try:
            await fill.wait()
        except FillError as exc:
            if exc.wrong_bytes:
                self.stats.wrong_bytes_fills += 1
                for peer, nbytes in ledger.delivered.items():
                    if nbytes > 0:
                        log.warning("penalising peer %s: wrong bytes for %s", peer, fill.digest)
                        self.penalties.wrong_bytes(peer, str(fill.digest))
                        self._report_wrong_bytes(peer, fill.digest)
            self._settled(fill.digest, ok=False)
            return
        finally:
            self._swarm_fills.discard(fill.digest)
        self._settled(fill.digest, ok=True)

    def _settled(self, digest: Digest, *, ok: bool) -> None:
        if ok:
            self.membership.advertise_have(str(digest))
        else:
            self.membership.advertise_drop(str(digest))

    # -- the server's side -----------------------------------------------------------------------

    def _in_flight(self, digest: Digest) -> Fill | None:
        return None if self._mirror is None else self._mirror.fetcher.in_flight(digest)

    async def _owner_fill(self, digest: Digest, origin: BlobOrigin, byte_range: RangeSpec | None,
                          want_body: bool) -> BlobContent:
        mirror = self._mirror
        if mirror is None:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, "this node is not a mirror")
        tokens = (current_namespace.set(origin.registry), _acting_for_peer.set(True))
        try:
            return await mirror.blob(origin.repository, digest, byte_range, want_body=want_body)
        finally:
            _acting_for_peer.reset(tokens[1])
            current_namespace.reset(tokens[0])

    # -- metrics ---------------------------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose ``p2preg_p2p_*`` counters in ``registry`` (the node's metrics registry)."""
        registry.register(_P2PCollector(self))


def nearest_peers(members: Sequence[Member], self_name: str, *, limit: int,
                  demoted: Collection[str] = ()) -> list[Peer]:
    """Up to ``limit`` live members other than ``self_name`` with an HTTP address, nearest
    first: alive before suspect, not demoted before demoted, this node's zone first, then by
    round-trip estimate (unknown last), load and name. Pure."""
    zone = next((m.zone for m in members if m.name == self_name), "")

    def distance(m: Member) -> tuple[int, int, int, float, float, str]:
        rtt = float("inf") if m.rtt_estimate_s is None else m.rtt_estimate_s
        return (0 if m.status == MemberStatus.ALIVE else 1, 1 if m.name in demoted else 0,
                0 if zone and m.zone == zone else 1, rtt, m.load, m.name)

    live = [m for m in members if m.name != self_name and m.http_addr
            and m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT)]
    return [Peer(m.name, m.http_addr) for m in sorted(live, key=distance)[:limit]]


async def _read_whole(source: PeerBlobSource, digest: Digest, max_bytes: int) -> bytes | None:
    """The whole body of ``digest`` from ``source``; None when it announces more than
    ``max_bytes`` (a manifest that big is refused before a byte is read)."""
    stream = await source.open(digest, 0)
    async with stream:
        if stream.size is None or stream.size > max_bytes:
            return None
        parts = [chunk async for chunk in stream.chunks()]
    return b"".join(parts)


class _P2PCollector(Collector):
    def __init__(self, p2p: P2P) -> None:
        self._p2p = p2p

    def collect(self) -> Iterator[Metric]:
        p2p = self._p2p
        served = CounterMetricFamily("p2preg_p2p_served", "Peer requests answered, by kind "
                                     "(blobs: local, in_progress, owner, not_found; pieces: "
                                     "piece, piece_cut_through (also counted in piece), "
                                     "piece_busy, piece_missing, piece_child (requests of an "
                                     "assigned child past the 404 check), piece_child_next "
                                     "(after an earlier answer to that child), "
                                     "piece_child_gap_ms (summed: how long after that answer's "
                                     "end the request came), piece_child_wait_ms (summed: "
                                     "arrival to sending), join (answered as a tracker); tags: "
                                     "tag, tag_unknown).",
                                     labels=["kind"])
        for kind in ("local", "in_progress", "owner", "not_found", "piece",
                     "piece_cut_through", "piece_busy", "piece_missing", "piece_child",
                     "piece_child_next", "piece_child_gap_ms", "piece_child_wait_ms", "join",
                     "tag", "tag_unknown"):
            served.add_metric([kind], p2p.server.stats.served[kind])
        yield served
        rejected = CounterMetricFamily("p2preg_p2p_rejected", "Peer blob requests refused, by "
                                       "reason.", labels=["reason"])
        for reason, count in sorted(p2p.server.stats.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        penalties = CounterMetricFamily("p2preg_p2p_penalties", "Peers penalised, by cause.",
                                        labels=["cause"])
        penalties.add_metric(["wrong_bytes"], p2p.penalties.wrong_bytes_total)
        penalties.add_metric(["failure"], p2p.penalties.failures_total)
        yield penalties
        yield CounterMetricFamily("p2preg_p2p_manifests_from_peers", "Manifests this node "
                                  "took from a peer instead of its upstream.",
                                  value=p2p.stats.manifests_from_peers)
        lookups = CounterMetricFamily("p2preg_p2p_tag_lookups", "Tags this node asked its peers "
                                      "for while the upstream was down, by outcome (answered: "
                                      "some peer named a digest).", labels=["outcome"])
        lookups.add_metric(["answered"], p2p.stats.tag_lookups_answered)
        lookups.add_metric(["unknown"], p2p.stats.tag_lookups - p2p.stats.tag_lookups_answered)
        yield lookups
        yield GaugeMetricFamily("p2preg_p2p_penalty_entries", "Entries in the penalty list.",
                                value=len(p2p.penalties))
        yield from _swarm_metrics(p2p)


def _swarm_metrics(p2p: P2P) -> Iterator[Metric]:
    """Coordinated forwarding as a child (``SwarmStats``) and as an owner (its trackers)."""
    stats, trackers = p2p.swarm_stats, p2p.trackers
    yield CounterMetricFamily("p2preg_swarm_joins", "Joins this node's swarm fills sent to a "
                              "digest's owner (answered).", value=stats.joins)
    yield CounterMetricFamily("p2preg_swarm_parent_losses", "Stripe parents this node's swarm "
                              "fills lost (failed, stalled or said 404 to a child request).",
                              value=stats.parent_losses)
    by_stripe = CounterMetricFamily("p2preg_swarm_parent_pieces", "Pieces this node received "
                                    "from an assigned stripe parent, by stripe.",
                                    labels=["stripe"])
    for stripe in range(p2p.config.scheduler.stripes):
        by_stripe.add_metric([str(stripe)], stats.parent_pieces_by_stripe[stripe])
    yield by_stripe
    parents = GaugeMetricFamily("p2preg_swarm_parents", "The current stripe parents of the "
                                "swarm fills running here (the owner's last answer): fills by "
                                "stripe and parent; no series once the fills end.",
                                labels=["stripe", "peer"])
    for (stripe, peer), fills in sorted(p2p.swarms.parents().items()):
        parents.add_metric([str(stripe), peer], fills)
    yield parents
    events = CounterMetricFamily("p2preg_tracker_events", "What this node's trackers (as the "
                                 "owner of digests) were told: join (answered), loss (a child "
                                 "reported its parent lost and was moved), leave (a member gossip "
                                 "declared dead or that left, taken out of a tree), refused "
                                 "(a new node given no parents: the digest's trees were full).",
                                 labels=["event"])
    events.add_metric(["join"], trackers.joins)
    events.add_metric(["loss"], trackers.losses)
    events.add_metric(["leave"], trackers.leaves)
    events.add_metric(["refused"], trackers.refused)
    yield events
    yield GaugeMetricFamily("p2preg_trackers", "Digests this node keeps a tracker for.",
                            value=len(trackers))
