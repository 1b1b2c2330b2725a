"""A deterministic data-plane simulator: many hosts pulling the same blobs over a flow network.

Owns: ``SwarmSim`` (the event loop), ``Topology`` (link capacities and latency), ``BlobSpec``,
``HostResult`` and ``SimResult`` (what a run measured), the ``Downloader``/``Uploader``
interfaces the loop drives, their implementations by the node's own policies
(``SchedulerDownloader`` over ``swarm.scheduler.Scheduler``, ``PolicyUploader`` over
``swarm.uploads.UploadPolicy``; ``swarm()`` builds such a run) and today's star design as the
baseline (``StarDownloader``/``StarUploader``, ``star()``: every host streams the whole blob
from the digest's owner).

The model, sans-I/O like ``p2preg.gossip.sim``: a fake clock (a float), every random choice
from one seeded ``random.Random``, one thread.
- Every host has an uplink and a downlink (``FlowNetwork`` links); the origin has an uplink.
  A piece transfer is one flow over the sender's uplink and the receiver's downlink; every link
  is shared max-min fairly; rates are recomputed once per batch of events that fall within
  ``batch_s`` of the batch's first (a rate change is late by at most ``batch_s``).
- The owner of a digest (``routing.owner_of`` over the host names) streams it from the origin
  sequentially, one flow per piece back to back (one TCP stream), from ``origin_rtt_s`` on.
  While it does, its downloaders of other digests are told so (``next_requests(now,
  upstream_busy=True)``: the scheduler's rule 1 limits their requests, as ``p2p.node_glue``
  tells the node's swarm fills).
- Any other host asks peers for pieces as its ``Downloader`` says. A request reaches the peer
  ``rtt_s / 2`` later (the per-hop start latency: a served piece starts flowing then); the
  peer's ``Uploader`` decides: serve, or busy with hints. A peer that lacks the piece parks the
  request when it is the owner (long-poll: decided when the piece arrives) and answers missing
  at once otherwise. Busy and missing answers reach the asker ``rtt_s / 2`` after the decision.
- **Cut-through** (``p2p.server``'s rules, ``cut_through=True``): a host asked for a piece it
  is receiving (its own request for it is out) passes it on: never to the peer it receives
  that piece from (404), and only once its first byte came (the request was served); it waits
  at most ``CUT_THROUGH_WAIT_S`` (``ROOT_FEED_WAIT_S`` when its source is the owner), then
  404. The owner serves a piece from the moment its origin flow starts (its growing file). A
  relay is a flow *fed* by the one it passes on (``FlowNetwork``: its rate never exceeds the
  feeder's, so it never finishes first); a feeder cancelled breaks its relays (the askers
  count a failure of the relay). Availability (``Have``) lists whole pieces only, as the
  node's; a relay's place in the upload policy makes it a hint as soon as it is admitted.
- **A child's line** (``p2p.child_lines``): a host sends an assigned child's piece flows one at
  a time; a child request decided while another flow to that child is on is queued and
  arrives again (``answers["queued"]``; its wait counts in ``waited`` again) when that flow
  ends or is cancelled. Only with ``parent_requests`` above 1.
- Every answer (a piece, busy, missing) carries the peer's availability and its upload load
  (``Uploader.load``, ``P2preg-Load``) at that moment (a piece's reaches the asker with its
  first byte, ``rtt_s / 2`` after the decision).
- A request the downloader gives up (stalled) is withdrawn: its flow is cancelled (the upload
  released as not completed) or its long-poll dropped.
- A host is done with a blob when it holds every piece. Bytes sent by each host and by the
  origin are what crossed their uplinks.

Must not import asyncio, sockets or time; the only node code it runs is the swarm policies it
drives and ``p2p.routing``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2preg.p2p.routing import owner_of
from p2preg.swarm.flows import Flow, FlowNetwork
from p2preg.swarm.pieces import BUSY_SLOTS, Have, Layout
from p2preg.swarm.scheduler import (
    ROLE_HOLDER,
    ROLE_MEMBER,
    ROLE_OWNER,
    Request,
    Scheduler,
    SchedulerConfig,
)
from p2preg.swarm.tracker import Tracker, TrackerConfig
from p2preg.swarm.uploads import Ticket, UploadConfig, UploadPolicy

SERVE, BUSY, MISSING = "serve", "busy", "missing"
#: ``p2p.server``'s bounded first-byte waits of a cut-through relay (its source a peer / the
#: digest's root); not imported (the server pulls in aiohttp), a test checks they agree.
CUT_THROUGH_WAIT_S = 0.5
ROOT_FEED_WAIT_S = 2.0


class Downloader(Protocol):
    """The download side of one host for one blob."""

    def next_requests(
        self, now: float, upstream_busy: bool = False
    ) -> tuple[list[Request], list[Request]]:
        """``(requests to send, requests given up)``; the sim withdraws the given-up ones.
        ``upstream_busy``: the host streams another blob from the origin now (its owner)."""
        ...

    def next_deadline(self) -> float | None: ...
    def on_progress(self, peer: str, piece: int, now: float) -> None: ...
    def on_piece(self, peer: str, piece: int, have: Have, now: float) -> None: ...
    def on_busy(
        self, peer: str, piece: int, hints: Sequence[str], have: Have, now: float, *,
        slots: bool = False,
    ) -> None:
        """``slots``: busy for want of upload slots (``P2preg-Busy: slots``)."""
        ...
    def on_missing(self, peer: str, piece: int, have: Have, now: float) -> None: ...
    def on_failed(self, peer: str, piece: int, now: float) -> None:
        """A piece answer broke off (the relay's own source failed)."""
        ...
    def on_load(self, peer: str, load: int, now: float) -> None:
        """An answer of ``peer`` said it runs ``load`` uploads (``P2preg-Load``)."""
        ...
    def want_join(self, now: float) -> dict[int, str] | None:
        """A join to send to the owner's tracker now (the parents lost), or None."""
        ...
    def on_parents(self, parents: dict[int, str], now: float) -> None:
        """The tracker's answer to a join (``P2preg-Parents``)."""
        ...


class Uploader(Protocol):
    """The upload side of one host, for every digest."""

    def decide(
        self, digest: str, piece: int, requester: str, last_resort: bool, seed: bool,
        now: float, child: bool = False,
    ) -> tuple[bool, Sequence[str]]:
        """``(serve?, hints)`` for a piece this host holds (``seed``: it holds the whole blob;
        ``child``: the requester is its assigned child in the piece's stripe)."""
        ...

    def on_upload_end(
        self, digest: str, piece: int, requester: str, completed: bool, now: float
    ) -> None: ...
    def load(self) -> int:
        """Uploads in progress (what its answers advertise)."""
        ...


@dataclass(frozen=True, slots=True)
class Topology:
    """Link capacities (bytes per second) and the request round trip between two hosts."""

    host_up_bps: float
    host_down_bps: float
    origin_up_bps: float
    rtt_s: float = 0.001
    origin_rtt_s: float | None = None
    """Round trip to the origin (default ``rtt_s``)."""


@dataclass(frozen=True, slots=True)
class BlobSpec:
    """A blob every host pulls, cut as ``layout`` says (the model's piece granularity)."""

    digest: str
    layout: Layout

    @classmethod
    def of(cls, digest: str, size: int, piece_bytes: int) -> BlobSpec:
        return cls(digest, Layout(size, piece_bytes))


@dataclass(slots=True)
class _Flight:
    """A request on its way or being served: ``token`` tells stale events from live ones."""

    token: int
    peer: str
    flow: Flow | None = None
    waiters: list[tuple[str, Request, int]] = field(default_factory=list)
    """Requests from other hosts for this piece waiting for its first byte (cut-through):
    ``(asker, request, token)``."""


@dataclass(slots=True)
class _Fill:
    """One host's state for one blob."""

    blob: BlobSpec
    held: set[int] = field(default_factory=set)
    prefix: int = 0
    done_at: float | None = None
    downloader: Downloader | None = None
    flights: dict[int, _Flight] = field(default_factory=dict)
    """This host's requests by piece."""
    parked: dict[int, list[tuple[str, Request, int]]] = field(default_factory=dict)
    """Long-polled requests by piece, ``(asker, request, token)``: at the owner, and at a
    parent for its assigned children (until its own request for the piece goes out)."""
    upstream: dict[int, Flow] = field(default_factory=dict)
    """Owner only: the origin flow of each piece that started (the owner serves a piece from
    its growing file: its bytes as they arrive from the origin)."""

    have: Have | None = None
    """``availability()`` until the next ``add``."""

    def add(self, piece: int) -> None:
        self.held.add(piece)
        self.have = None
        while self.prefix in self.held:
            self.prefix += 1

    def availability(self) -> Have:
        if self.have is None:
            self.have = Have(self.prefix, frozenset(p for p in self.held if p >= self.prefix))
        return self.have


@dataclass(slots=True)
class _Host:
    name: str
    up: int
    down: int
    uploader: Uploader
    fills: dict[str, _Fill] = field(default_factory=dict)
    wake_at: float = math.inf


@dataclass(frozen=True, slots=True)
class HostResult:
    name: str
    done_s: float | None
    """When the host held every blob (None: not by the end of the run)."""
    uploaded_bytes: float


@dataclass(frozen=True, slots=True)
class SimResult:
    hosts: tuple[HostResult, ...]
    origin_bytes: float
    blob_bytes: int
    """Total size of the blobs every host pulls."""
    end_s: float
    reallocations: int
    events: int

    def completion(self) -> list[float]:
        return sorted(h.done_s if h.done_s is not None else math.inf for h in self.hosts)

    def quantile(self, q: float) -> float:
        """Completion time at quantile ``q`` (nearest rank)."""
        times = self.completion()
        return times[min(len(times) - 1, max(0, math.ceil(q * len(times)) - 1))]

    def max_upload_copies(self) -> float:
        return max(h.uploaded_bytes for h in self.hosts) / self.blob_bytes

    def origin_copies(self) -> float:
        return self.origin_bytes / self.blob_bytes


DownloaderFactory = Callable[[str, BlobSpec, str, Sequence[str], random.Random], Downloader]
"""``(host, blob, owner, every host name, rng) -> Downloader`` for a host that is not the
blob's owner."""
UploaderFactory = Callable[[str, random.Random], Uploader]


class SwarmSim:
    """Hosts pulling ``blobs`` from time 0 over ``topology``, driven by the given policies."""

    def __init__(
        self,
        seed: int,
        hosts: int | Sequence[str],
        topology: Topology,
        blobs: Sequence[BlobSpec],
        downloader: DownloaderFactory,
        uploader: UploaderFactory,
        *,
        batch_s: float = 0.0005,
        long_poll_everywhere: bool = False,
        cut_through: bool = True,
        cut_through_wait_s: float = CUT_THROUGH_WAIT_S,
        root_feed_wait_s: float = ROOT_FEED_WAIT_S,
        held_by: dict[str, set[str]] | None = None,
        flow_engine: str = "fast",
        tracker: TrackerConfig | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.topology = topology
        self.blobs = list(blobs)
        self.batch_s = batch_s
        self.long_poll_everywhere = long_poll_everywhere
        """Every host (not only the owner) parks a request for a piece it lacks (today's
        fetchers, which follow a growing file)."""
        self.cut_through = cut_through
        """A host passes on a piece it is receiving (``p2p.server``'s rule; module docstring)."""
        self.cut_through_wait_s = cut_through_wait_s
        self.root_feed_wait_s = root_feed_wait_s
        self.now = 0.0
        self.net = FlowNetwork(engine=flow_engine)
        """``flow_engine``: ``FlowNetwork``'s; both give the same run, to the bit."""
        self._pending = 0
        """Fills not done yet (the run ends at 0)."""
        self._origin = self.net.add_link("origin", topology.origin_up_bps)
        names = [f"h{i:04d}" for i in range(hosts)] if isinstance(hosts, int) else list(hosts)
        self.hosts: dict[str, _Host] = {}
        for name in names:
            up = self.net.add_link((name, "up"), topology.host_up_bps)
            down = self.net.add_link((name, "down"), topology.host_down_bps)
            self.hosts[name] = _Host(name, up, down, uploader(name, self._child_rng()))
        self.owners = {b.digest: owner_of(b.digest, names) or "" for b in self.blobs}
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._dirty: set[str] = set()
        self.events = 0
        self.observers: list[Callable[[SwarmSim], None]] = []
        """Called after every batch's reallocation (read-only: ``swarm.trace``)."""
        self.answers: dict[str, int] = dict.fromkeys(
            ("served", BUSY, MISSING, "parked", "cut_through", "waited", "broken"), 0)
        """How requests were answered (``parked``: long-polled at the owner first)."""
        self._child_lines: dict[tuple[str, str, str], tuple[Flow, list[tuple[Any, ...]]]] = {}
        """(server, digest, child) -> the child flow being sent and the child requests queued
        behind it (``p2p.server``'s child line: one child's requests are served in order)."""
        self.answers["queued"] = 0
        held_by = held_by or {}
        """The update phase: digest -> hosts holding the whole blob at time 0 (seeds)."""
        for host in self.hosts.values():
            for blob in self.blobs:
                fill = host.fills[blob.digest] = _Fill(blob)
                if host.name in held_by.get(blob.digest, ()):
                    for piece in range(blob.layout.count):
                        fill.add(piece)
                    fill.done_at = 0.0
                    continue
                self._pending += 1
                if self.owners[blob.digest] != host.name:
                    fill.downloader = downloader(
                        host.name, blob, self.owners[blob.digest], names, self._child_rng()
                    )
                    self._dirty.add(host.name)
        self.trackers: dict[str, Tracker] = {}
        """The owner's tracker of each digest (``swarm.tracker``; None config: no trackers).
        Holders at time 0 are in it as complete nodes (the owner knows them from gossip)."""
        if tracker is not None:
            for blob in self.blobs:
                owner = self.owners[blob.digest]
                t = self.trackers[blob.digest] = Tracker(owner, tracker, self._child_rng())
                for name in sorted(held_by.get(blob.digest, ())):
                    if name != owner:
                        t.join(name, now=0.0, complete=True)
        self.joins = 0
        origin_rtt = topology.origin_rtt_s if topology.origin_rtt_s is not None else topology.rtt_s
        for blob in self.blobs:
            if self.owners[blob.digest] not in held_by.get(blob.digest, ()):
                self._push(origin_rtt, self._origin_piece, blob.digest, 0)

    def _child_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def _push(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), fn, args))

    # -- the loop --------------------------------------------------------------------------------

    def run(self, until_s: float = 3600.0) -> SimResult:
        """Run until every host holds every blob, nothing can move, or ``until_s``."""
        net = self.net
        self._pump()
        while not self._all_done():
            t_ev = self._heap[0][0] if self._heap else math.inf
            t_fl = net.next_finish()
            start = min(t_ev, math.inf if t_fl is None else t_fl)
            if start > until_s or start == math.inf:
                break
            horizon = start + self.batch_s
            while True:
                t_ev = self._heap[0][0] if self._heap else math.inf
                t_fl = net.next_finish()
                t_fl = math.inf if t_fl is None else t_fl
                t = min(t_ev, t_fl)
                if t > horizon:
                    break
                self.now = max(self.now, t)
                if t_fl <= t_ev:
                    for flow in net.advance(self.now):
                        self._flow_done(flow)
                else:
                    net.advance(self.now)
                    _, _, fn, args = heapq.heappop(self._heap)
                    fn(*args)
                self.events += 1
            self._pump()
            if net.dirty:
                net.reallocate()
            for observe in self.observers:
                observe(self)
        return self._result()

    def _all_done(self) -> bool:
        return self._pending == 0

    def _pump(self) -> None:
        """Let every host touched in this batch send its next requests; re-arm its wake-up."""
        dirty, self._dirty = self._dirty, set()
        rtt_half = self.topology.rtt_s / 2
        for name in sorted(dirty):
            host = self.hosts[name]
            wake = math.inf
            streaming = any(self.owners[digest] == name and fill.done_at is None
                            for digest, fill in host.fills.items())
            for digest, fill in host.fills.items():
                d = fill.downloader
                if d is None or fill.done_at is not None:
                    continue
                for piece, flight in fill.flights.items():
                    if flight.flow is not None:
                        d.on_progress(flight.peer, piece, self.now)
                lost = d.want_join(self.now) if digest in self.trackers else None
                if lost is not None:  # (first: a fill asks nobody before its first answer)
                    self.joins += 1
                    self._push(self.now + rtt_half, self._join, name, digest, lost)
                send, gave_up = d.next_requests(self.now, streaming)
                for req in gave_up:
                    self._withdraw(host, fill, req)
                for req in send:
                    token = next(self._tokens)
                    flight = fill.flights[req.piece] = _Flight(token, req.peer)
                    self._push(self.now + rtt_half, self._arrive, name, digest, req, token)
                    for asker, wreq, wtoken in fill.parked.pop(req.piece, ()):
                        # Children parked here wait for this request's first byte.
                        if asker == req.peer:
                            self._missing(name, fill, asker, wreq, wtoken)
                        else:
                            flight.waiters.append((asker, wreq, wtoken))
                deadline = d.next_deadline()
                if deadline is not None:
                    wake = min(wake, max(deadline, self.now))
            if wake < host.wake_at or host.wake_at <= self.now:
                host.wake_at = wake
                if wake < math.inf:
                    self._push(wake, self._wake, name)

    def _join(self, name: str, digest: str, lost: dict[int, str]) -> None:
        """A join reaches the digest's owner; its tracker's answer goes back."""
        tracker = self.trackers[digest]
        tracker.join(name, now=self.now, lost=lost)
        self._push(self.now + tracker.config.answer_hold_s, self._answer_join, name, digest)

    def _answer_join(self, name: str, digest: str) -> None:
        parents = self.trackers[digest].parents(name)
        self._push(self.now + self.topology.rtt_s / 2, self._parents, name, digest, parents)

    def _parents(self, name: str, digest: str, parents: dict[int, str]) -> None:
        d = self.hosts[name].fills[digest].downloader
        if d is not None:
            d.on_parents(parents, self.now)
            self._dirty.add(name)

    def _wake(self, name: str) -> None:
        host = self.hosts[name]
        if host.wake_at <= self.now:
            host.wake_at = math.inf
        self._dirty.add(name)

    def _withdraw(self, host: _Host, fill: _Fill, req: Request) -> None:
        flight = fill.flights.get(req.piece)
        if flight is None or flight.peer != req.peer:
            return
        self._end_flight(host.name, fill, req.piece)
        if flight.flow is not None and flight.flow.active:
            self._cancel(flight.flow)

    def _cancel(self, flow: Flow) -> None:
        """Cancel a peer's piece flow and, after it, every relay it fed (their answers break
        off: the askers count a failure of the relay and ask elsewhere)."""
        followers = list(flow.followers)
        self.net.cancel(flow)
        tag: tuple[str, str, int, str, str, int] = flow.tag  # type: ignore[assignment]
        _, digest, piece, asker, server, _token = tag
        self.hosts[server].uploader.on_upload_end(digest, piece, asker, False, self.now)
        self._next_in_line(flow, server, digest, asker)
        for relay in followers:
            if not relay.active:
                continue
            rtag: tuple[str, str, int, str, str, int] = relay.tag  # type: ignore[assignment]
            _, digest, piece, asker, server, token = rtag
            self._cancel(relay)
            self.answers["broken"] += 1
            fill = self.hosts[asker].fills[digest]
            if self._live(asker, digest, piece, token) is not None:
                self._end_flight(asker, fill, piece)
                d = fill.downloader
                assert d is not None
                d.on_failed(server, piece, self.now)
                self._dirty.add(asker)

    def _end_flight(self, name: str, fill: _Fill, piece: int) -> None:
        """``name``'s request for ``piece`` ended: who waited for its first byte is told 404
        (an assigned child waits on: it is parked until the next request or the piece)."""
        flight = fill.flights.pop(piece)
        for asker, req, token in flight.waiters:
            if req.child:
                fill.parked.setdefault(piece, []).append((asker, req, token))
            else:
                self._missing(name, fill, asker, req, token)

    def _live(self, asker: str, digest: str, piece: int, token: int) -> _Flight | None:
        flight = self.hosts[asker].fills[digest].flights.get(piece)
        return flight if flight is not None and flight.token == token else None

    # -- upstream: the owner streams from the origin ---------------------------------------------

    def _origin_piece(self, digest: str, piece: int) -> None:
        owner = self.hosts[self.owners[digest]]
        blob = owner.fills[digest].blob
        if piece < blob.layout.count:
            fill = owner.fills[digest]
            flow = fill.upstream[piece] = self.net.start(
                [self._origin, owner.down], blob.layout.length(piece),
                ("origin", digest, piece, owner.name))
            if self.cut_through:
                for asker, req, token in fill.parked.pop(piece, ()):
                    self._decide(owner, fill, asker, req, token, flow)

    # -- serving ---------------------------------------------------------------------------------

    def _arrive(self, asker: str, digest: str, req: Request, token: int) -> None:
        if self._live(asker, digest, req.piece, token) is None:
            return  # withdrawn on the way
        server = self.hosts[req.peer]
        fill = server.fills[digest]
        if req.piece not in fill.held:
            root = self.owners[digest] == server.name
            if self.cut_through and root:
                upstream = fill.upstream.get(req.piece)
                if upstream is not None and upstream.active:
                    self._decide(server, fill, asker, req, token, upstream)
                    return
            own = fill.flights.get(req.piece) if self.cut_through else None
            if own is not None and own.peer != asker:
                # Cut-through: this host is receiving the piece; its bytes are passed on.
                if own.flow is not None:
                    self._decide(server, fill, asker, req, token, own.flow)
                    return
                own.waiters.append((asker, req, token))
                self.answers["waited"] += 1
                if not req.child:  # an assigned child waits as long as it likes
                    wait = (self.root_feed_wait_s if own.peer == self.owners[digest]
                            else self.cut_through_wait_s)
                    self._push(self.now + wait, self._first_byte_timeout,
                               server.name, digest, req.piece, own.token, asker, token)
            elif root or self.long_poll_everywhere or (req.child and self.cut_through):
                fill.parked.setdefault(req.piece, []).append((asker, req, token))
                self.answers["parked"] += 1
            else:
                self._missing(server.name, fill, asker, req, token)
            return
        self._decide(server, fill, asker, req, token)

    def _missing(self, server: str, fill: _Fill, asker: str, req: Request, token: int) -> None:
        self.answers[MISSING] += 1
        self._reply(asker, fill.blob.digest, req, token, MISSING, (), fill.availability(),
                    self.hosts[server].uploader.load())

    def _first_byte_timeout(self, server: str, digest: str, piece: int, own_token: int,
                            asker: str, token: int) -> None:
        """No first byte of a piece ``server`` receives within the bounded wait: 404."""
        fill = self.hosts[server].fills[digest]
        own = fill.flights.get(piece)
        if own is None or own.token != own_token or own.flow is not None:
            return
        for i, (name, req, tok) in enumerate(own.waiters):
            if name == asker and tok == token:
                del own.waiters[i]
                self._missing(server, fill, asker, req, token)
                return

    def _decide(self, server: _Host, fill: _Fill, asker: str, req: Request, token: int,
                feeder: Flow | None = None) -> None:
        digest = fill.blob.digest
        flight = self._live(asker, digest, req.piece, token)
        if flight is None:
            return
        line_key = (server.name, digest, asker)
        line = self._child_lines.get(line_key) if req.child else None
        if line is not None:  # in order: it waits for the last byte of the one being sent
            line[1].append((asker, digest, req, token))
            self.answers["queued"] += 1
            return
        serve, hints = server.uploader.decide(digest, req.piece, asker, req.last_resort,
                                              fill.done_at is not None, self.now, req.child)
        self.answers["served" if serve else BUSY] += 1
        if serve:
            if feeder is not None and feeder.active:
                self.answers["cut_through"] += 1
            flight.flow = self.net.start(
                [server.up, self.hosts[asker].down], fill.blob.layout.length(req.piece),
                ("peer", digest, req.piece, asker, server.name, token), feeder=feeder,
            )
            if req.child:
                self._child_lines[line_key] = (flight.flow, [])
            self._push(self.now + self.topology.rtt_s / 2, self._load_seen,
                       asker, digest, req.peer, token, server.uploader.load())
            for waiter, wreq, wtoken in flight.waiters:
                self._decide(self.hosts[asker], self.hosts[asker].fills[digest], waiter, wreq,
                             wtoken, flight.flow)
            flight.waiters.clear()
        else:
            slots = isinstance(server.uploader, PolicyUploader) \
                and server.uploader.refused == BUSY_SLOTS
            self._reply(asker, digest, req, token, BUSY, tuple(hints), fill.availability(),
                        server.uploader.load(), slots)

    def _next_in_line(self, flow: Flow, server: str, digest: str, child: str) -> None:
        """``flow`` to ``child`` ended: the child's next queued request is decided now (as it
        arrived: the piece may be held, fed, or still awaited)."""
        key = (server, digest, child)
        line = self._child_lines.get(key)
        if line is None or line[0] is not flow:
            return
        del self._child_lines[key]
        queue = line[1]
        while queue:
            self._arrive(*queue.pop(0))
            if key in self._child_lines:  # that one is being sent: the rest wait behind it
                self._child_lines[key][1].extend(queue)
                return

    def _load_seen(self, asker: str, digest: str, server: str, token: int, load: int) -> None:
        fill = self.hosts[asker].fills[digest]
        if fill.downloader is not None:
            fill.downloader.on_load(server, load, self.now)

    def _reply(
        self, asker: str, digest: str, req: Request, token: int, verdict: str,
        hints: tuple[str, ...], have: Have, load: int, slots: bool = False,
    ) -> None:
        self._push(self.now + self.topology.rtt_s / 2, self._answer,
                   asker, digest, req, token, verdict, hints, have, load, slots)  # fmt: skip

    def _answer(
        self, asker: str, digest: str, req: Request, token: int, verdict: str,
        hints: tuple[str, ...], have: Have, load: int, slots: bool = False,
    ) -> None:
        fill = self.hosts[asker].fills[digest]
        if self._live(asker, digest, req.piece, token) is None:
            return
        self._end_flight(asker, fill, req.piece)
        d = fill.downloader
        assert d is not None
        d.on_load(req.peer, load, self.now)
        if verdict == BUSY:
            d.on_busy(req.peer, req.piece, hints, have, self.now, slots=slots)
        else:
            d.on_missing(req.peer, req.piece, have, self.now)
        self._dirty.add(asker)

    # -- arrivals --------------------------------------------------------------------------------

    def _flow_done(self, flow: Flow) -> None:
        tag = flow.tag
        assert isinstance(tag, tuple)
        if tag[0] == "origin":
            _, digest, piece, owner = tag
            self._received(owner, digest, piece)
            self._origin_piece(digest, piece + 1)
            return
        _, digest, piece, asker, server_name, token = tag
        server = self.hosts[server_name]
        server.uploader.on_upload_end(digest, piece, asker, True, self.now)
        self._next_in_line(flow, server_name, digest, asker)
        fill = self.hosts[asker].fills[digest]
        if self._live(asker, digest, piece, token) is not None:
            self._end_flight(asker, fill, piece)
        self._received(asker, digest, piece)
        d = fill.downloader
        if d is not None:
            d.on_piece(server_name, piece, server.fills[digest].availability(), self.now)
        self._dirty.add(asker)

    def _received(self, name: str, digest: str, piece: int) -> None:
        host = self.hosts[name]
        fill = host.fills[digest]
        fill.add(piece)
        if fill.done_at is None and fill.prefix >= fill.blob.layout.count:
            fill.done_at = self.now
            self._pending -= 1
            self._dirty.add(name)  # an owner's other fills may ask more now (upstream done)
        for asker, req, token in fill.parked.pop(piece, ()):
            self._decide(host, fill, asker, req, token)

    # -- results ---------------------------------------------------------------------------------

    def _result(self) -> SimResult:
        hosts = []
        for host in self.hosts.values():
            times = [f.done_at for f in host.fills.values()]
            done = None if any(t is None for t in times) else max(t for t in times if t is not None)
            hosts.append(HostResult(host.name, done, self.net.carried((host.name, "up"))))
        return SimResult(
            hosts=tuple(hosts),
            origin_bytes=self.net.carried("origin"),
            blob_bytes=sum(b.layout.size for b in self.blobs),
            end_s=self.now,
            reallocations=self.net.reallocations,
            events=self.events,
        )


# -- the node's policies -------------------------------------------------------------------------


class SchedulerDownloader:
    """A non-owner's fill driven by the node's ``Scheduler``.

    It knows the owner from the start and ``known_fetchers`` other hosts as fetchers (what
    gossip may have told it; 0 by default), and learns every other peer from busy answers'
    hints: a hinted peer joins its peer set as a plain member, as the node does."""

    def __init__(self, host: str, blob: BlobSpec, owner: str, known: Sequence[str],
                 config: SchedulerConfig | None, rng: random.Random,
                 holders: Sequence[str] = ()) -> None:
        self.scheduler = Scheduler(blob.layout, self_name=host, config=config, rng=rng)
        self.owner = owner
        self.peers: dict[str, str] = {owner: ROLE_OWNER}
        for name in known:
            self.peers.setdefault(name, "fetcher")
        for name in holders:
            if name != owner:
                self.peers[name] = ROLE_HOLDER
        self.scheduler.set_peers(self.peers, owner)

    def next_requests(
        self, now: float, upstream_busy: bool = False
    ) -> tuple[list[Request], list[Request]]:
        stalled = self.scheduler.expire(now)
        return self.scheduler.next_requests(now, upstream_busy=upstream_busy), stalled

    def next_deadline(self) -> float | None:
        return self.scheduler.next_deadline()

    def on_progress(self, peer: str, piece: int, now: float) -> None:
        self.scheduler.on_progress(peer, piece, now)

    def on_piece(self, peer: str, piece: int, have: Have, now: float) -> None:
        self.scheduler.on_availability(peer, have, now)
        self.scheduler.on_piece(peer, piece, now)

    def on_busy(
        self, peer: str, piece: int, hints: Sequence[str], have: Have, now: float, *,
        slots: bool = False,
    ) -> None:
        new = [h for h in hints if h not in self.peers]
        if new:
            self.peers.update(dict.fromkeys(new, ROLE_MEMBER))
            self.scheduler.set_peers(self.peers, self.owner)
        self.scheduler.on_availability(peer, have, now)
        self.scheduler.on_busy(peer, piece, hints, now, slots=slots)

    def on_failed(self, peer: str, piece: int, now: float) -> None:
        self.scheduler.on_failed(peer, piece, now)

    def on_load(self, peer: str, load: int, now: float) -> None:
        self.scheduler.on_load(peer, load, now)

    def want_join(self, now: float) -> dict[int, str] | None:
        return self.scheduler.want_join(now)

    def on_parents(self, parents: dict[int, str], now: float) -> None:
        new = [p for p in parents.values() if p not in self.peers]
        if new:
            self.peers.update(dict.fromkeys(new, ROLE_MEMBER))
            self.scheduler.set_peers(self.peers, self.owner)
        self.scheduler.set_parents(parents, now)

    def on_missing(self, peer: str, piece: int, have: Have, now: float) -> None:
        self.scheduler.on_missing(peer, piece, have, now)


class PolicyUploader:
    """A host's upload side driven by the node's ``UploadPolicy``."""

    def __init__(self, config: UploadConfig | None, rng: random.Random) -> None:
        self.policy = UploadPolicy(config, rng)
        self._tickets: dict[tuple[str, int, str], Ticket] = {}
        self.refused: str | None = None
        """The last refusal's kind (``BUSY_PIECE``/``BUSY_SLOTS``): the answer's ``P2preg-Busy``."""

    def decide(
        self, digest: str, piece: int, requester: str, last_resort: bool, seed: bool,
        now: float, child: bool = False,
    ) -> tuple[bool, Sequence[str]]:
        admission = self.policy.admit(digest, piece, requester, now=now,
                                      last_resort=last_resort, seed=seed, child=child)
        if admission.ticket is None:
            self.refused = admission.busy
            return False, admission.hints
        self._tickets[(digest, piece, requester)] = admission.ticket
        return True, ()

    def on_upload_end(
        self, digest: str, piece: int, requester: str, completed: bool, now: float
    ) -> None:
        ticket = self._tickets.pop((digest, piece, requester), None)
        if ticket is not None:
            self.policy.release(ticket, completed=completed, now=now)

    def load(self) -> int:
        return self.policy.active


def swarm(
    seed: int, hosts: int, topology: Topology, blobs: Sequence[BlobSpec], *,
    scheduler: SchedulerConfig | None = None, uploads: UploadConfig | None = None,
    known_fetchers: int = 0, batch_s: float = 0.0005, holders: int = 0,
    flow_engine: str = "fast",
    tracker: TrackerConfig | None = None,
) -> SwarmSim:
    """A simulation of the piece swarm with the node's own scheduler and upload policy.

    ``holders=k`` (the update phase): the owner and ``k - 1`` other hosts hold every blob at
    time 0 (the owner served the first puller: both are seeds), the others know them as
    holders (gossip's advertisement) and pull at once; no origin traffic."""
    names = [f"h{i:04d}" for i in range(hosts)]
    held_by: dict[str, set[str]] = {}
    if holders > 0:
        for blob in blobs:
            owner = owner_of(blob.digest, names) or ""
            held_by[blob.digest] = {owner, *[n for n in names if n != owner][:holders - 1]}

    def downloader(
        host: str, blob: BlobSpec, owner: str, names: Sequence[str], rng: random.Random
    ) -> Downloader:
        others = [n for n in names if n not in (host, owner)]
        known = rng.sample(others, min(known_fetchers, len(others)))
        return SchedulerDownloader(host, blob, owner, known, scheduler, rng,
                                   sorted(held_by.get(blob.digest, ())))

    return SwarmSim(
        seed, names, topology, blobs, downloader,
        lambda host, rng: PolicyUploader(uploads, rng), batch_s=batch_s, held_by=held_by,
        flow_engine=flow_engine,
        tracker=tracker if tracker is not None or not (scheduler or SchedulerConfig()).tracker
        else TrackerConfig(stripes=(scheduler or SchedulerConfig()).stripes),
    )  # fmt: skip


# -- today's star design: the baseline the swarm is measured against ----------------------------


class StarDownloader:
    """Today's non-owner: streams the blob in order from one source (two pieces in flight,
    i.e. one pipelined stream that follows the source's growing file)."""

    def __init__(self, blob: BlobSpec, source: str, in_flight: int = 2) -> None:
        self.source = source
        self.count = blob.layout.count
        self.in_flight = in_flight
        self.next_piece = 0
        self.pending = 0

    def next_requests(
        self, now: float, upstream_busy: bool = False
    ) -> tuple[list[Request], list[Request]]:
        out = []
        while self.pending < self.in_flight and self.next_piece < self.count:
            out.append(Request(self.source, self.next_piece))
            self.next_piece += 1
            self.pending += 1
        return out, []

    def next_deadline(self) -> float | None:
        return None

    def on_progress(self, peer: str, piece: int, now: float) -> None:
        return None

    def on_piece(self, peer: str, piece: int, have: Have, now: float) -> None:
        self.pending -= 1

    def on_busy(
        self, peer: str, piece: int, hints: Sequence[str], have: Have, now: float, *,
        slots: bool = False,
    ) -> None:
        raise AssertionError("a star source never says busy")

    def on_missing(self, peer: str, piece: int, have: Have, now: float) -> None:
        raise AssertionError("a star source long-polls")

    def on_failed(self, peer: str, piece: int, now: float) -> None:
        raise AssertionError("a star source never relays")

    def on_load(self, peer: str, load: int, now: float) -> None:
        return None

    def want_join(self, now: float) -> dict[int, str] | None:
        return None

    def on_parents(self, parents: dict[int, str], now: float) -> None:
        return None


class StarUploader:
    """Today's source: serves every asker, no cap."""

    def decide(
        self, digest: str, piece: int, requester: str, last_resort: bool, seed: bool,
        now: float, child: bool = False,
    ) -> tuple[bool, Sequence[str]]:
        return True, ()

    def on_upload_end(
        self, digest: str, piece: int, requester: str, completed: bool, now: float
    ) -> None:
        return None

    def load(self) -> int:
        return 0


def star(
    seed: int, hosts: int, topology: Topology, blobs: Sequence[BlobSpec], *,
    owner_followers: int | None = None,
) -> SwarmSim:
    """A simulation of today's star design: every non-owner streams from the owner, or, with
    ``owner_followers=k``, only k of them do and the others follow the first of those k (the
    fetcher they happened to see in time, as the lab measured)."""
    sources: dict[str, str] = {}

    def source(host: str, owner: str, names: Sequence[str]) -> str:
        if not sources:
            others = [n for n in names if n != owner]
            k = len(others) if owner_followers is None else owner_followers
            for i, name in enumerate(others):
                sources[name] = owner if i < k else others[0]
        return sources[host]

    return SwarmSim(
        seed, hosts, topology, blobs,
        lambda host, blob, owner, names, rng: StarDownloader(blob, source(host, owner, names)),
        lambda host, rng: StarUploader(),
        long_poll_everywhere=True,
    )  # fmt: skip
