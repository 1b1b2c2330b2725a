"""A deterministic data-plane simulator: many hosts pulling the same blobs over a flow network.

Owns: ``SwarmSim`` (the event loop), ``Topology`` (link capacities and latency), ``HostResult``
and ``SimResult`` (what a run measured), and the ``Downloader``/``Uploader`` interfaces the loop
drives, with the star baseline (``StarDownloader``/``StarUploader``: every host streams the whole
blob from the digest's owner, today's design) next to them.

The model, sans-I/O like ``p2preg.gossip.sim``: a fake clock (a float), one ``random.Random``
per run, one thread.
- Every host has an uplink and a downlink (``FlowNetwork`` links); the origin has an uplink.
  A piece transfer is one flow over the sender's uplink and the receiver's downlink; every link
  is shared max-min fairly; rates are recomputed once per batch of events that fall within
  ``batch_s`` of each other (a flow's rate change is late by at most ``batch_s``).
- The owner of a digest (``routing.owner_of`` over the host names) streams it from the origin
  sequentially, one flow per piece back to back (one TCP stream), starting ``rtt_s`` in.
- Any other host asks peers for pieces as its ``Downloader`` says. A request reaches the peer
  ``rtt_s / 2`` later; the peer's ``Uploader`` decides there: serve (a flow starts at once),
  busy with hints, or missing; those two answers reach the asker another ``rtt_s / 2`` later.
  A peer that lacks the piece parks the request when it is the owner (long-poll, served when the
  piece arrives), and answers missing at once otherwise.
- Every answer carries the peer's availability (contiguous prefix plus the other pieces held).
- A host is done with a blob when it holds every piece; bytes sent by each host and by the
  origin are counted per link.

Must not import asyncio, sockets or time; the only node code it runs is the policies it drives
and ``p2p.routing``.
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

SERVE, BUSY, MISSING = "serve", "busy", "missing"


@dataclass(frozen=True, slots=True)
class SimRequest:
    """Ask ``peer`` for ``piece`` (``last_resort``: the asker has no other source)."""

    peer: str
    piece: int
    last_resort: bool = False


@dataclass(frozen=True, slots=True)
class Availability:
    """What a peer holds of one blob: pieces ``[0, prefix)`` plus ``extra``."""

    prefix: int
    extra: frozenset[int] = frozenset()

    def has(self, piece: int) -> bool:
        return piece < self.prefix or piece in self.extra


class Downloader(Protocol):
    """The download side of one host for one blob (the node's scheduler, adapted)."""

    def next_requests(self, now: float) -> list[SimRequest]: ...
    def next_deadline(self) -> float | None: ...
    def on_piece(self, peer: str, piece: int, have: Availability, now: float) -> None: ...
    def on_busy(
        self, peer: str, piece: int, hints: Sequence[str], have: Availability, now: float
    ) -> None: ...
    def on_missing(self, peer: str, piece: int, have: Availability, now: float) -> None: ...


class Uploader(Protocol):
    """The upload side of one host, for every digest (the node's upload policy, adapted)."""

    def decide(
        self, digest: str, piece: int, requester: str, last_resort: bool, now: float
    ) -> tuple[str, Sequence[str]]:
        """``(SERVE|BUSY, hints)`` for a piece this host holds."""
        ...

    def on_upload_done(self, digest: str, piece: int, requester: str, now: float) -> None: ...


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
    digest: str
    size: int
    piece_bytes: int

    @property
    def count(self) -> int:
        return -(-self.size // self.piece_bytes)

    def length(self, piece: int) -> int:
        return min(self.piece_bytes, self.size - piece * self.piece_bytes)


@dataclass(slots=True)
class _Fill:
    """One host's state for one blob."""

    blob: BlobSpec
    held: set[int] = field(default_factory=set)
    prefix: int = 0
    done_at: float | None = None
    downloader: Downloader | None = None
    parked: dict[int, list[tuple[str, bool]]] = field(default_factory=dict)
    """Owner only: long-polled requests by piece, ``(requester, last_resort)``."""

    def add(self, piece: int) -> None:
        self.held.add(piece)
        while self.prefix in self.held:
            self.prefix += 1

    def availability(self) -> Availability:
        return Availability(self.prefix, frozenset(p for p in self.held if p >= self.prefix))


@dataclass(slots=True)
class _Host:
    name: str
    up: int
    down: int
    uploader: Uploader
    fills: dict[str, _Fill] = field(default_factory=dict)
    sent_bytes: float = 0.0
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
"""``(host, blob, owner, all host names, rng) -> Downloader`` for a non-owner host."""
UploaderFactory = Callable[[str, random.Random], Uploader]


class SwarmSim:
    """Hosts pulling ``blobs`` at time 0 over ``topology``, driven by the given policies."""

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
    ) -> None:
        self.rng = random.Random(seed)
        self.topology = topology
        self.blobs = list(blobs)
        self.batch_s = batch_s
        self.long_poll_everywhere = long_poll_everywhere
        """Every host (not only the owner) parks a request for a piece it lacks (today's
        fetchers, which follow a growing file)."""
        self.now = 0.0
        self.net = FlowNetwork()
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
        self._dirty: set[str] = set()
        self.events = 0
        for host in self.hosts.values():
            for blob in self.blobs:
                fill = host.fills[blob.digest] = _Fill(blob)
                if self.owners[blob.digest] != host.name:
                    fill.downloader = downloader(
                        host.name, blob, self.owners[blob.digest], names, self._child_rng()
                    )
                    self._dirty.add(host.name)
        origin_rtt = topology.origin_rtt_s if topology.origin_rtt_s is not None else topology.rtt_s
        for blob in self.blobs:
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
        return self._result()

    def _all_done(self) -> bool:
        return all(f.done_at is not None for h in self.hosts.values() for f in h.fills.values())

    def _pump(self) -> None:
        """Let every host touched in this batch send its next requests; re-arm its wake-up."""
        dirty, self._dirty = self._dirty, set()
        rtt_half = self.topology.rtt_s / 2
        for name in sorted(dirty):
            host = self.hosts[name]
            wake = math.inf
            for digest, fill in host.fills.items():
                d = fill.downloader
                if d is None or fill.done_at is not None:
                    continue
                for req in d.next_requests(self.now):
                    self._push(self.now + rtt_half, self._arrive, name, digest, req)
                deadline = d.next_deadline()
                if deadline is not None:
                    wake = min(wake, max(deadline, self.now))
            if wake < host.wake_at or host.wake_at <= self.now:
                host.wake_at = wake
                if wake < math.inf:
                    self._push(wake, self._wake, name)

    def _wake(self, name: str) -> None:
        host = self.hosts[name]
        if host.wake_at <= self.now:
            host.wake_at = math.inf
        self._dirty.add(name)

    # -- upstream: the owner streams from the origin ---------------------------------------------

    def _origin_piece(self, digest: str, piece: int) -> None:
        owner = self.hosts[self.owners[digest]]
        blob = owner.fills[digest].blob
        if piece < blob.count:
            self.net.start([self._origin, owner.down], blob.length(piece),
                           ("origin", digest, piece, owner.name))  # fmt: skip

    # -- serving ---------------------------------------------------------------------------------

    def _arrive(self, asker: str, digest: str, req: SimRequest) -> None:
        server = self.hosts[req.peer]
        fill = server.fills[digest]
        if req.piece not in fill.held:
            if self.owners[digest] == server.name or self.long_poll_everywhere:
                fill.parked.setdefault(req.piece, []).append((asker, req.last_resort))
            else:
                self._reply(asker, digest, req, MISSING, (), fill.availability())
            return
        self._decide(server, fill, asker, req)

    def _decide(self, server: _Host, fill: _Fill, asker: str, req: SimRequest) -> None:
        digest = fill.blob.digest
        verdict, hints = server.uploader.decide(digest, req.piece, asker, req.last_resort, self.now)
        if verdict == SERVE:
            self.net.start([server.up, self.hosts[asker].down], fill.blob.length(req.piece),
                           ("peer", digest, req.piece, asker, server.name))  # fmt: skip
        else:
            self._reply(asker, digest, req, verdict, tuple(hints), fill.availability())

    def _reply(
        self, asker: str, digest: str, req: SimRequest, verdict: str, hints: tuple[str, ...],
        have: Availability,
    ) -> None:
        self._push(self.now + self.topology.rtt_s / 2, self._answer,
                   asker, digest, req, verdict, hints, have)  # fmt: skip

    def _answer(
        self, asker: str, digest: str, req: SimRequest, verdict: str, hints: tuple[str, ...],
        have: Availability,
    ) -> None:
        d = self.hosts[asker].fills[digest].downloader
        assert d is not None
        if verdict == BUSY:
            d.on_busy(req.peer, req.piece, hints, have, self.now)
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
        _, digest, piece, asker, server_name = tag
        server = self.hosts[server_name]
        server.sent_bytes += flow.size
        server.uploader.on_upload_done(digest, piece, asker, self.now)
        fill = self._received(asker, digest, piece)
        d = fill.downloader
        if d is not None:
            d.on_piece(server_name, piece, server.fills[digest].availability(), self.now)
        self._dirty.add(asker)

    def _received(self, name: str, digest: str, piece: int) -> _Fill:
        host = self.hosts[name]
        fill = host.fills[digest]
        fill.add(piece)
        if fill.done_at is None and fill.prefix >= fill.blob.count:
            fill.done_at = self.now
        for asker, last_resort in fill.parked.pop(piece, ()):
            self._decide(host, fill, asker, SimRequest(name, piece, last_resort))
        return fill

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
            blob_bytes=sum(b.size for b in self.blobs),
            end_s=self.now,
            reallocations=self.net.reallocations,
            events=self.events,
        )


# -- today's star design: the baseline the swarm is measured against ----------------------------


class StarDownloader:
    """Today's non-owner: streams the blob in order from the owner only (two pieces in flight,
    i.e. one pipelined stream that follows the owner's growing file)."""

    def __init__(self, blob: BlobSpec, source: str, in_flight: int = 2) -> None:
        self.owner = source
        self.count = blob.count
        self.in_flight = in_flight
        self.next_piece = 0
        self.pending = 0

    def next_requests(self, now: float) -> list[SimRequest]:
        out = []
        while self.pending < self.in_flight and self.next_piece < self.count:
            out.append(SimRequest(self.owner, self.next_piece))
            self.next_piece += 1
            self.pending += 1
        return out

    def next_deadline(self) -> float | None:
        return None

    def on_piece(self, peer: str, piece: int, have: Availability, now: float) -> None:
        self.pending -= 1

    def on_busy(
        self, peer: str, piece: int, hints: Sequence[str], have: Availability, now: float
    ) -> None:
        raise AssertionError("the star owner never says busy")

    def on_missing(self, peer: str, piece: int, have: Availability, now: float) -> None:
        raise AssertionError("the star owner long-polls")


class StarUploader:
    """Today's owner: serves every asker, no cap."""

    def decide(
        self, digest: str, piece: int, requester: str, last_resort: bool, now: float
    ) -> tuple[str, Sequence[str]]:
        return SERVE, ()

    def on_upload_done(self, digest: str, piece: int, requester: str, now: float) -> None:
        return None


def star(
    seed: int, hosts: int, topology: Topology, blobs: Sequence[BlobSpec], *,
    owner_followers: int | None = None,
) -> SwarmSim:
    """A simulation of today's star design: every non-owner streams from the owner, or, with
    ``owner_followers=k``, only k of them do and the others follow the first of those k (the
    fetcher they happened to see in time, as the lab measured)."""
    followers: dict[str, str] = {}

    def source(host: str, owner: str, names: Sequence[str]) -> str:
        if not followers:
            others = [n for n in names if n != owner]
            k = len(others) if owner_followers is None else owner_followers
            for i, name in enumerate(others):
                followers[name] = owner if i < k else others[0]
        return followers[host]

    return SwarmSim(
        seed, hosts, topology, blobs,
        lambda host, blob, owner, names, rng: StarDownloader(blob, source(host, owner, names)),
        lambda host, rng: StarUploader(),
        long_poll_everywhere=True,
    )  # fmt: skip
