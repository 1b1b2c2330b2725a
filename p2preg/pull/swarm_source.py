"""``SwarmSource``: a non-owner's fill from many peers at once, piece by piece, as one
``fetch.BlobSource`` whose stream yields the blob's bytes in order.

Owns: ``SwarmSource``, ``SwarmStream``, ``SwarmView`` (who the peers are, as the glue sees them
now), ``SwarmRegistry`` (the streams running on this node, for the server to answer from their
in-memory pieces) and ``SWARM_HEADER``.

How a stream runs (the choices are ``swarm.scheduler.Scheduler``'s; this module only moves bytes):
- Without the blob's size, the first request asks a holder (else the owner, which long-polls)
  for bytes ``[offset, offset + FIRST_REQUEST_BYTES)``; every answer tells the size, and from it
  the layout (``swarm.pieces.Layout``) every node agrees on.
- Then the scheduler's requests run in parallel, each an ordinary signed ``Range`` request for
  one piece's span with ``P2preg-Swarm: 1``. A piece that arrives whole waits in memory until
  every piece before it is there; the stream then yields it: the fill's sequential writer
  (hash, readers, hash gate, commit) sees bytes in order, exactly as from one source.
- Answers: ``206`` -> ``on_piece``; ``503`` with ``P2preg-Busy`` -> ``on_busy(hints)``; ``404``
  -> ``on_missing(have)``; anything else, a broken body or a connection error -> ``on_failed``
  (and the peer's penalty). ``P2preg-Have`` of every answer -> ``on_availability``;
  ``P2preg-Load`` -> ``on_load`` (read with the headers: a ``206``'s before its body); an
  answer with ``P2preg-Have`` but no valid ``P2preg-Load`` (an older node) -> ``on_load(None)``.
- A peer with ``DEAD_AFTER_FAILURES`` connection failures in a row is taken as gone for this
  fill: the view is asked again without it. When this node is then the digest's owner (the
  owner died and this node is next in its rendezvous order) the stream raises ``PeerError``
  after yielding what is contiguous: the fill moves on to its next source (the upstream) and
  resumes at the byte it reached. Same when the owner answers errors (not busy, not missing)
  ``OWNER_ERRORS`` times (a ``404`` without ``P2preg-Have``, its own fill failing, counts): it
  could not deliver. This is the only way a non-owner reaches the upstream.
- **Joins** (the scheduler's rule 0, ``SchedulerConfig.tracker``): when ``want_join`` says
  so, a ``HEAD`` with ``P2preg-Join: 1`` (and ``P2preg-Lost``) goes to the digest's owner; its
  ``P2preg-Parents`` -> ``set_parents`` (a name the view has no address for is skipped by the
  scheduler: the fallback covers its stripe); no answer -> ``on_join_failed``. A request the
  scheduler marks ``child`` carries ``P2preg-Child: 1``. A dead owner: the view names the
  successor, the lost parents are reported there on the next join.
- A peer's child request for a piece this stream does not have yet waits on ``wait_piece``
  (the piece arrives, or this stream's own request for it is sent).
- The last ``KEEP_YIELDED_BYTES`` of yielded pieces stay in memory (the writer batches its
  writes; the pieces stay servable until they are in the file). Memory per fill: at most
  ``window_pieces`` + that many pieces.

Must not import the registry package, storage or gossip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

from p2preg.clock import Clock, MonotonicClock
from p2preg.oci.digest import Digest
from p2preg.p2p.auth import (
    NODE_HEADER,
    REPOSITORY_HEADER,
    ROUTE_HEADER,
    UPSTREAM_HEADER,
    RequestSigner,
)
from p2preg.p2p.routing import ROLE_HOLDER, ROLE_OWNER
from p2preg.p2p.source import (
    BLOBS_PATH,
    CONTENT_RANGE,
    BlobOrigin,
    FailureCallback,
    Ledger,
    PeerClientConfig,
    PeerError,
)
from p2preg.pull.piece_feed import PieceFeed
from p2preg.swarm.pieces import (
    BUSY_HEADER,
    BUSY_SLOTS,
    CHILD_HEADER,
    FIRST_REQUEST_BYTES,
    HAVE_HEADER,
    HINT_HEADER,
    JOIN_HEADER,
    LAST_RESORT_HEADER,
    LOAD_HEADER,
    LOST_HEADER,
    PARENTS_HEADER,
    SIZE_HEADER,
    SWARM_HEADER,
    Have,
    Layout,
    decode_hints,
    decode_load,
    decode_stripes,
    encode_stripes,
    stripe_of,
)
from p2preg.swarm.scheduler import Request, Scheduler, SchedulerConfig
from p2preg.upstream.errors import UpstreamNotFound

log = logging.getLogger(__name__)

#: The failures that say the peer could not be reached (its connection was refused, reset or
#: closed): evidence it is gone, counted towards dropping it for the fill (``_Answer.connection``).
_CONNECTION_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                      ConnectionError)

DEAD_AFTER_FAILURES = 2
OWNER_ERRORS = 3
KEEP_YIELDED_BYTES = 8 << 20
#: How often a stream looks at the membership again (new holders, a new owner).
REFRESH_S = 1.0
#: While a piece's body arrives, the kernel wakes this node only once this many bytes wait in
#: the socket (``SO_RCVLOWAT``; never more than the body still owes): a 64 Mbit/s link then
#: hands the event loop 64 KiB per wake-up instead of ~20 KiB, and every chunk costs a parse,
#: a feed wake-up and a scheduler call (``RecvLowWater``).
RECV_LOW_WATER_BYTES = 64 << 10
_MAX_SIZE = 1 << 50


@dataclass(frozen=True, slots=True)
class SwarmView:
    """The live peers of one digest now: ``roles`` (name -> ``scheduler.ROLE_*``), their HTTP
    addresses, and the digest's owner (None: no live member; may be this node)."""

    roles: dict[str, str]
    addrs: dict[str, str]
    owner: str | None


#: ``view(gone)``: the view of the digest without the peers in ``gone`` (seen dead by this fill).
ViewFn = Callable[[frozenset[str]], SwarmView]


@dataclass
class _Answer:
    kind: str  # piece, busy, missing, failed
    size: int | None = None
    have: Have | None = None
    hints: tuple[str, ...] = ()
    slots: bool = False  # busy for want of upload slots (``P2preg-Busy: slots``)
    data: bytes = b""
    reason: str = ""
    connection: bool = False


class SwarmRegistry:
    """The swarm streams running on this node, by digest (the server reads their pieces)."""

    def __init__(self) -> None:
        self._streams: dict[Digest, SwarmStream] = {}

    def get(self, digest: Digest) -> SwarmStream | None:
        return self._streams.get(digest)

    def add(self, stream: SwarmStream) -> None:
        self._streams[stream.digest] = stream

    def remove(self, stream: SwarmStream) -> None:
        if self._streams.get(stream.digest) is stream:
            del self._streams[stream.digest]

    def __len__(self) -> int:
        return len(self._streams)

    def parents(self) -> Counter[tuple[int, str]]:
        """The current stripe parents of the fills running here: (stripe, parent) -> fills."""
        out: Counter[tuple[int, str]] = Counter()
        for stream in self._streams.values():
            if stream.sched is not None:
                out.update(stream.sched.parents.items())
        return out


@dataclass
class SwarmStats:
    pieces: int = 0
    busy: int = 0
    missing: int = 0
    failed: int = 0
    handed_over: int = 0
    joins: int = 0
    join_failures: int = 0
    #: pieces received from an assigned parent (``child`` requests answered whole)
    parent_pieces: int = 0
    parent_losses: int = 0
    #: pieces received by peer, and those of them asked as an assigned child
    pieces_by_peer: Counter[str] = field(default_factory=Counter)
    parent_pieces_by_peer: Counter[str] = field(default_factory=Counter)
    #: pieces received from an assigned parent, by stripe
    parent_pieces_by_stripe: Counter[int] = field(default_factory=Counter)


class SwarmSource:
    """Many peers as one source of one fill (module docstring)."""

    kind = "peer"
    name = "swarm"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        view: ViewFn,
        *,
        node_name: str,
        registry: SwarmRegistry,
        clock: Clock | None = None,
        signer: RequestSigner | None = None,
        origin: BlobOrigin | None = None,
        config: PeerClientConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        rng: random.Random | None = None,
        ledger: Ledger | None = None,
        on_failure: FailureCallback | None = None,
        stats: SwarmStats | None = None,
        upstream_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.session = session
        self.view = view
        self.node_name = node_name
        self.registry = registry
        # the scheduler's timers must agree with asyncio's timeouts: a real monotonic clock
        self.clock: Clock = clock or MonotonicClock()
        self.signer = signer
        self.origin = origin
        self.config = config or PeerClientConfig()
        self.scheduler_config = scheduler or SchedulerConfig()
        self.rng = rng or random.Random()
        self.ledger = ledger or Ledger()
        self.on_failure = on_failure or (lambda peer, reason: None)
        self.stats = stats or SwarmStats()
        #: whether this node streams a blob from its upstream now (the scheduler's rule 1)
        self.upstream_busy = upstream_busy or (lambda: False)

    async def open(self, digest: Digest, offset: int) -> SwarmStream:
        stream = SwarmStream(self, digest, offset)
        await stream.start()
        return stream


class SwarmStream:
    """One running swarm download (``SwarmSource.open``)."""

    def __init__(self, source: SwarmSource, digest: Digest, offset: int) -> None:
        self.src = source
        self.digest = digest
        self.offset = offset
        self.size: int | None = None
        self.layout: Layout | None = None
        self.sched: Scheduler | None = None
        self._view = source.view(frozenset())
        self._gone: set[str] = set()
        self._conn_failures: dict[str, int] = {}
        self._owner_errors = 0
        #: pieces received, not yet yielded (the window): piece -> (first byte, bytes); the
        #: first byte is the piece's start except for the piece a resume began in
        self._pieces: dict[int, tuple[int, bytes]] = {}
        #: pieces yielded lately, kept until the writer has them in its file
        self._yielded: OrderedDict[int, bytes] = OrderedDict()
        self._first: tuple[int, bytes] | None = None  # (start, bytes) of the first answer
        #: ``P2preg-Load`` values read and not yet told the scheduler: (peer, load, when);
        #: None: a swarm answer without one
        self._loads: list[tuple[str, int | None, float]] = []
        #: pieces arriving now (cut-through: the server passes their bytes on as they come)
        self._receiving: dict[int, PieceFeed] = {}
        self._started: dict[Request, int] = {}  # the first byte each request asked for
        self._tasks: dict[asyncio.Task[_Answer], Request] = {}
        #: set by ``check_owner`` when the owner is found gone: the next step re-reads the view
        self._woken = False
        #: the future a step waits on; a finished request or a wake-up resolves it
        self._ready: asyncio.Future[None] | None = None
        self._owner_check: asyncio.Task[None] | None = None
        self._refreshed_at = source.clock.now()
        self._progress_at = source.clock.now()
        self._join: asyncio.Task[dict[int, str] | _Answer] | None = None
        self._join_owner: str | None = None
        self._losses_seen = 0
        #: child requests of peers waiting for a piece (``wait_piece``)
        self._piece_waiters: dict[int, list[asyncio.Future[None]]] = {}
        #: who sent each piece (tests and logs: which parent served what)
        self.piece_sources: dict[int, str] = {}
        self.closed = False

    # -- what the server reads ---------------------------------------------------------------

    def piece(self, index: int) -> bytes | None:
        """The bytes of piece ``index`` if this stream holds it in memory."""
        got = self._pieces.get(index)
        if got is not None and self.layout is not None \
                and got[0] == self.layout.span(index)[0]:
            return got[1]
        feed = self._receiving.get(index)
        if feed is not None and feed.done and self.layout is not None \
                and feed.start == self.layout.span(index)[0]:
            return feed.data()
        return self._yielded.get(index)

    def receiving(self, index: int) -> PieceFeed | None:
        """Piece ``index`` while it arrives from a peer (None: not being received now)."""
        feed = self._receiving.get(index)
        return feed if feed is not None and not feed.done and not feed.failed else None

    def have_in_memory(self) -> frozenset[int]:
        """The whole pieces this stream holds in memory."""
        return frozenset(i for i in [*self._pieces, *self._yielded] if self.piece(i) is not None)

    async def wait_piece(self, index: int, timeout: float) -> bool:
        """Until piece ``index`` is in memory or arriving (a child's request waits for it);
        False at once once this stream ended (handed over to the upstream, or done)."""
        if self.closed:
            return False
        if self.piece(index) is not None or self.receiving(index) is not None:
            return True
        future = asyncio.get_running_loop().create_future()
        waiters = self._piece_waiters.setdefault(index, [])
        waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._piece_waiters.pop(index, None)
        return not self.closed

    def _wake_piece(self, index: int) -> None:
        for future in self._piece_waiters.pop(index, ()):
            if not future.done():
                future.set_result(None)

    def check_owner(self) -> None:
        """A peer asked this node as the owner: the owner may be gone. Try to connect to it;
        refused or timed out: it is gone for this fill (``_refresh``)."""
        if self._owner_check is None or self._owner_check.done():
            self._owner_check = asyncio.get_running_loop().create_task(self._probe_owner())

    async def _probe_owner(self) -> None:
        owner = self._view.owner
        addr = None if owner is None else self._view.addrs.get(owner)
        if owner is None or addr is None or owner in self._gone:
            return
        host, _, port = addr.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)),
                self.src.config.connect_timeout_s)
        except (OSError, TimeoutError, ValueError):
            log.info("swarm %s: owner %s does not answer; it is gone", self.digest, owner)
            self._gone.add(owner)
            self._woken = True
            self._resolve_ready()
            return
        writer.close()

    # -- the stream ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the size (the first request); raise ``PeerError`` when nobody answers it."""
        self.src.registry.add(self)
        try:
            await self._first_request()
        except BaseException:
            self.src.registry.remove(self)
            raise

    async def _first_request(self) -> None:
        view = self._view
        holders = [n for n, r in view.roles.items() if r == ROLE_HOLDER and n in view.addrs]
        owner = view.owner if view.owner != self.src.node_name \
            and view.owner in view.addrs else None
        # The owner usually holds the blob once anyone pulled it (it fetched it for them), but
        # gossip may not say so yet: asked as a holder (no upstream fetch), it tells its
        # availability, so this fill can use it as a second seed.
        seeds = [*holders, owner] if holders and owner is not None \
            and owner not in holders else holders
        targets: list[tuple[str, bool]] = []
        if seeds:
            first = self.src.rng.choice(seeds)
            targets.append((first, True))
            if first not in holders:
                targets.append((self.src.rng.choice(holders), True))
        if owner is not None and owner not in holders:
            targets.append((owner, False))
        missing = 0
        for peer, as_holder in targets:
            end = self.offset + FIRST_REQUEST_BYTES
            answer = await self._get(peer, self.offset, end, last_resort=False, piece=None,
                                     as_holder=as_holder)
            if answer.size is not None:
                self._set_size(answer.size)
                if answer.kind == "piece":
                    self._first = (self.offset, answer.data)
                    self._credit(peer, answer)
                return
            missing += answer.kind == "missing"
        if targets and missing == len(targets):  # like a peer source's 404: not held against
            raise UpstreamNotFound("swarm", "no holder or owner has the blob", status=404)
        raise PeerError("swarm", "no holder or owner told the size of the blob")

    def _set_size(self, size: int) -> None:
        self.size = size
        layout = self.layout = Layout.for_size(size)
        cfg = self.src.scheduler_config
        sched = self.sched = Scheduler(layout, self_name=self.src.node_name, config=cfg,
                                       rng=random.Random(self.src.rng.random()))
        sched.set_peers(self._view.roles, self._view.owner)
        self._tell_loads(sched)
        now = self.src.clock.now()
        if self.offset >= size:
            return
        for i in range(layout.piece_at(self.offset) if self.offset else 0):
            sched.on_piece("", i, now)  # below the offset: the fill has them already

    def _tell_loads(self, sched: Scheduler) -> None:
        """Pass on the ``P2preg-Load`` values read (those before the scheduler existed too)."""
        for peer, load, at in self._loads:
            sched.on_load(peer, load, at)
        self._loads.clear()

    def _credit(self, peer: str, answer: _Answer) -> None:
        if answer.have is not None and self.sched is not None:
            self.sched.on_availability(peer, answer.have, self.src.clock.now())

    async def chunks(self) -> AsyncIterator[bytes]:
        layout, sched = self.layout, self.sched
        assert layout is not None and sched is not None
        pos = self.offset  # the next byte to yield
        try:
            if self._first is not None and pos < layout.size:
                start, data = self._first
                self._first = None
                piece = layout.piece_at(start)
                begin, end = layout.span(piece)
                if start + len(data) >= end:
                    sched.on_piece("", piece, self.src.clock.now())
                    if start == begin:
                        self._keep(piece, data)
                pos += len(data)
                yield data
            while pos < layout.size:
                piece = layout.piece_at(pos)
                got = self._pieces.pop(piece, None)
                if got is not None:  # hand out what is contiguous
                    start, data = got
                    if start == layout.span(piece)[0]:
                        self._keep(piece, data)
                    out = data[pos - start:] if pos > start else data
                    pos = layout.span(piece)[1]
                    yield out
                    continue
                await self._step(pos)
        finally:
            self._close()
            await self._cancel_all()
            self.src.registry.remove(self)

    def _close(self) -> None:
        """The stream ended: children waiting for a piece here stop waiting."""
        self._count_losses()
        self.closed = True
        for index in list(self._piece_waiters):
            self._wake_piece(index)

    async def _step(self, pos: int) -> None:
        """Send what the scheduler wants, wait for one answer or deadline, apply it."""
        sched, clock = self.sched, self.src.clock
        assert sched is not None and self.layout is not None
        now = clock.now()
        for req in sched.expire(now):
            self._cancel(req)
        self._joins(sched, now)
        for req in sched.next_requests(now, upstream_busy=self.src.upstream_busy()):
            start, end = self.layout.span(req.piece)
            start = max(start, pos) if req.piece == self.layout.piece_at(pos) else start
            task = asyncio.get_running_loop().create_task(
                self._get(req.peer, start, end, last_resort=req.last_resort, piece=req.piece,
                          child=req.child))
            task.add_done_callback(self._resolve_ready)
            self._tasks[task] = req
            self._started[req] = start
        if now - self._progress_at > self.src.config.idle_timeout_s:
            raise PeerError("swarm", f"no piece arrived for "
                            f"{self.src.config.idle_timeout_s:.0f} s")
        deadline = sched.next_deadline()
        # without requests or timers: look at the membership again now and then
        timeout = REFRESH_S if deadline is None else min(REFRESH_S,
                                                          max(0.0, deadline - clock.now()))
        # One future per step, resolved by a request's end or a wake-up (cheaper than
        # ``asyncio.wait`` over every request in flight at each step).
        if not self._woken and not any(task.done() for task in self._tasks) \
                and not (self._join is not None and self._join.done()):
            loop = asyncio.get_running_loop()
            ready = self._ready = loop.create_future()
            timer = loop.call_later(timeout, self._resolve_ready)
            try:
                await ready
            finally:
                timer.cancel()
                self._ready = None
        woken, self._woken = self._woken, False
        if woken or clock.now() - self._refreshed_at >= REFRESH_S:
            self._refresh()
        for task, req in list(self._tasks.items()):
            # (an answer applied before may have cancelled the requests to a peer gone)
            if task.done() and task in self._tasks:
                del self._tasks[task]
                self._apply(req, task.result())

    def _joins(self, sched: Scheduler, now: float) -> None:
        """Rule 0: apply a join's answer; send the next join when the scheduler wants one."""
        join = self._join
        if join is not None and join.done():
            self._join = None
            answer = None if join.cancelled() or join.exception() else join.result()
            if isinstance(answer, _Answer):  # refused or unreachable
                self.src.stats.join_failures += 1
                sched.on_join_failed(now)
                owner = self._join_owner
                if answer.connection and owner is not None and owner == self._view.owner:
                    # An owner that cannot be reached is evidence it is gone, like a piece
                    # request's (its children may ask nobody else: their parents wait on it).
                    self._peer_failed(owner, answer)
            elif answer is None:
                self.src.stats.join_failures += 1
                sched.on_join_failed(now)
            else:
                sched.set_parents(answer, now)
        self._count_losses()
        if self._join is not None:
            return
        lost = sched.want_join(now)
        if lost is None:
            return
        owner = self._view.owner
        if owner is None or owner == self.src.node_name or owner not in self._view.addrs:
            sched.on_join_failed(now)
            return
        self.src.stats.joins += 1
        self._join_owner = owner
        task = self._join = asyncio.get_running_loop().create_task(self._send_join(owner, lost))
        task.add_done_callback(self._resolve_ready)

    def _count_losses(self) -> None:
        losses = self.sched.parent_losses if self.sched is not None else 0
        if losses > self._losses_seen:
            self.src.stats.parent_losses += losses - self._losses_seen
            self._losses_seen = losses

    async def _send_join(self, owner: str, lost: dict[int, str]) -> dict[int, str] | _Answer:
        """``HEAD`` with ``P2preg-Join`` to the owner: its ``P2preg-Parents``, or a failed
        ``_Answer`` (``connection``: it could not be reached)."""
        src = self.src
        path = f"{BLOBS_PATH}{self.digest}"
        headers = {NODE_HEADER: src.node_name, ROUTE_HEADER: ROLE_OWNER, JOIN_HEADER: "1"}
        if lost:
            headers[LOST_HEADER] = encode_stripes(lost)
        if src.signer is not None:
            headers.update(src.signer.sign("HEAD", path, headers))
        cfg = src.config
        timeout = aiohttp.ClientTimeout(total=cfg.idle_timeout_s,
                                        sock_connect=cfg.connect_timeout_s)
        url = f"{cfg.scheme}://{self._view.addrs[owner]}{path}"
        try:
            async with src.session.head(url, headers=headers, timeout=timeout,
                                        allow_redirects=False) as response:
                if response.status != 200:
                    return _Answer("failed", reason=f"join answered HTTP {response.status}")
                raw = response.headers.get(PARENTS_HEADER, "")
                return decode_stripes(raw) if raw else {}
        except _CONNECTION_ERRORS as exc:
            log.info("swarm %s: join at %s failed: %s", self.digest, owner, exc)
            return _Answer("failed", reason=f"join: {type(exc).__name__}: {exc}",
                           connection=True)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, RuntimeError) as exc:
            log.info("swarm %s: join at %s failed: %s", self.digest, owner, exc)
            return _Answer("failed", reason=f"join: {type(exc).__name__}: {exc}")

    def _resolve_ready(self, _: object = None) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _apply(self, req: Request, answer: _Answer) -> None:
        sched, now, stats = self.sched, self.src.clock.now(), self.src.stats
        assert sched is not None and self.layout is not None
        self._receiving.pop(req.piece, None)
        start = self._started.pop(req, self.layout.span(req.piece)[0])
        if answer.have is not None:
            sched.on_availability(req.peer, answer.have, now)
        if answer.kind == "piece":
            stats.pieces += 1
            self._conn_failures.pop(req.peer, None)
            if req.peer == self._view.owner:
                self._owner_errors = 0
            self._pieces[req.piece] = (start, answer.data)
            self._progress_at = now
            self.piece_sources[req.piece] = req.peer
            stats.parent_pieces += req.child
            stats.pieces_by_peer[req.peer] += 1
            if req.child:
                stats.parent_pieces_by_peer[req.peer] += 1
                stripe = stripe_of(req.piece, self.src.scheduler_config.stripes)
                stats.parent_pieces_by_stripe[stripe] += 1
            sched.on_piece(req.peer, req.piece, now)
            self._wake_piece(req.piece)
        elif answer.kind == "busy":
            stats.busy += 1
            sched.on_busy(req.peer, req.piece, answer.hints, now, slots=answer.slots)
        elif answer.kind == "missing":
            stats.missing += 1
            sched.on_missing(req.peer, req.piece, answer.have, now)
            if answer.have is None and req.peer == self._view.owner:
                # not a piece answer: the owner's own fill failed (its upstream refused)
                self._peer_failed(req.peer, _Answer("failed", reason="the owner has no fill"))
        else:
            stats.failed += 1
            sched.on_failed(req.peer, req.piece, now)
            self._peer_failed(req.peer, answer)

    def _peer_failed(self, peer: str, answer: _Answer) -> None:
        owner = self._view.owner
        if answer.connection:
            n = self._conn_failures[peer] = self._conn_failures.get(peer, 0) + 1
            if n >= DEAD_AFTER_FAILURES:
                log.info("swarm %s: peer %s is gone (%s)", self.digest, peer, answer.reason)
                self._gone.add(peer)
                self._refresh()
        elif peer == owner:
            self._owner_errors += 1
            if self._owner_errors >= OWNER_ERRORS:
                self.src.stats.handed_over += 1
                raise PeerError(peer, f"the owner could not deliver: {answer.reason}")

    def _refresh(self) -> None:
        sched = self.sched
        self._refreshed_at = self.src.clock.now()
        view = self._view = self.src.view(frozenset(self._gone))
        if view.owner == self.src.node_name:
            self.src.stats.handed_over += 1
            raise PeerError("swarm", "the owner is gone and this node is next: it fills "
                            "from the upstream")
        if sched is not None:
            for req in sched.set_peers(view.roles, view.owner):
                self._cancel(req)

    def _keep(self, piece: int, data: bytes) -> None:
        self._yielded[piece] = data
        total = sum(len(d) for d in self._yielded.values())
        while self._yielded and total > KEEP_YIELDED_BYTES:
            _, dropped = self._yielded.popitem(last=False)
            total -= len(dropped)

    def _cancel(self, req: Request) -> None:
        for task, r in list(self._tasks.items()):
            if r == req:
                task.cancel()
                del self._tasks[task]
                self._started.pop(req, None)

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        if self._owner_check is not None:
            tasks.append(self._owner_check)  # type: ignore[arg-type]
        if self._join is not None:
            tasks.append(self._join)  # type: ignore[arg-type]
            self._join = None
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> SwarmStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()
        await self._cancel_all()
        self.src.registry.remove(self)

    # -- one request ---------------------------------------------------------------------------

    async def _get(self, peer: str, start: int, end: int, *, last_resort: bool,
                   piece: int | None, as_holder: bool = False, child: bool = False) -> _Answer:
        """Ask ``peer`` for bytes ``[start, end)`` (``end`` clipped to the size by the peer)."""
        src = self.src
        addr = self._view.addrs.get(peer)
        if addr is None:
            return _Answer("failed", reason="no address")
        path = f"{BLOBS_PATH}{self.digest}"
        role = ROLE_OWNER if peer == self._view.owner and not as_holder else ROLE_HOLDER
        if self.size is not None:
            end = min(end, self.size)
        headers = {NODE_HEADER: src.node_name, ROUTE_HEADER: role, SWARM_HEADER: "1",
                   "Range": f"bytes={start}-{end - 1}"}
        if role == ROLE_OWNER and src.origin is not None:
            headers[UPSTREAM_HEADER] = src.origin.registry
            headers[REPOSITORY_HEADER] = src.origin.repository
        if last_resort:
            headers[LAST_RESORT_HEADER] = "1"
        if child:
            headers[CHILD_HEADER] = "1"
        if src.signer is not None:
            headers.update(src.signer.sign("GET", path, headers))
        cfg = src.config
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                        sock_read=cfg.idle_timeout_s)
        url = f"{cfg.scheme}://{addr}{path}"
        # Registered before the answer: a peer asking this node for the piece meanwhile waits
        # for its first byte (cut-through) rather than being told 404.
        feed = PieceFeed(peer, start, end, from_root=role == ROLE_OWNER)
        if piece is not None:
            self._receiving[piece] = feed
            self._wake_piece(piece)
        try:
            async with src.session.get(url, headers=headers, timeout=timeout,
                                       allow_redirects=False) as response:
                return await self._read(peer, response, start, end, piece, feed)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            connection = isinstance(exc, _CONNECTION_ERRORS)
            reason = f"{type(exc).__name__}: {exc}"
            src.on_failure(peer, reason)
            return _Answer("failed", reason=reason, connection=connection)
        except aiohttp.ClientError as exc:
            src.on_failure(peer, str(exc))
            return _Answer("failed", reason=f"{type(exc).__name__}: {exc}")
        except RuntimeError as exc:  # aiohttp: "Connection closed." (the session was closed)
            return _Answer("failed", reason=f"{type(exc).__name__}: {exc}", connection=True)
        finally:
            feed.finish(False)  # no-op when the piece arrived whole
            if feed.failed and piece is not None and self._receiving.get(piece) is feed:
                del self._receiving[piece]

    async def _read(self, peer: str, response: aiohttp.ClientResponse, start: int, end: int,
                    piece: int | None, feed: PieceFeed) -> _Answer:
        headers = response.headers
        have = size = None
        raw_load = headers.get(LOAD_HEADER)
        if raw_load is not None or HAVE_HEADER in headers:  # a node's answers carry both
            load: int | None = None  # none, or malformed: an older node (scheduler rule 3)
            with contextlib.suppress(ValueError):
                load = None if raw_load is None else decode_load(raw_load)
            self._loads.append((peer, load, self.src.clock.now()))
            if self.sched is not None:
                self._tell_loads(self.sched)
        with contextlib.suppress(ValueError):
            raw = headers.get(SIZE_HEADER)
            size = int(raw) if raw is not None and raw.isdigit() else None
            if size is not None and not 0 <= size < _MAX_SIZE:
                size = None
        if self.size is not None:
            size = self.size if size is None else size
        with contextlib.suppress(ValueError):
            raw = headers.get(HAVE_HEADER)
            if raw is not None and size is not None:
                have = Have.decode(raw, Layout.for_size(size).count)
        status = response.status
        if status == 503 and headers.get(BUSY_HEADER):
            return _Answer("busy", size=size, have=have,
                           hints=decode_hints(headers.get(HINT_HEADER, "")),
                           slots=headers.get(BUSY_HEADER) == BUSY_SLOTS)
        if status == 404:
            return _Answer("missing", size=size, have=have)
        if status != 206:
            self.src.on_failure(peer, f"answered HTTP {status}")
            return _Answer("failed", reason=f"HTTP {status}")
        match = CONTENT_RANGE.match(headers.get("Content-Range", ""))
        if match is None:
            return self._bad(peer, "206 without a valid Content-Range")
        first, last, total = (int(g) for g in match.groups())
        if first != start or (self.size is not None and total != self.size) \
                or last != min(end, total) - 1 or total >= _MAX_SIZE:
            return self._bad(peer, f"answered bytes {first}-{last}/{total} to {start}-{end - 1}")
        expected = last - first + 1
        if feed.end != last + 1:  # the end was clipped to the size: the feed had no reader yet
            feed.end = last + 1
        got = 0
        sched, clock, ledger = self.sched, self.src.clock, self.src.ledger
        ok = False
        low_water = RecvLowWater.of(response, expected)
        try:
            async for chunk, _ in response.content.iter_chunks():
                low_water.update()
                if not chunk:
                    continue
                got += len(chunk)
                if got > expected:
                    return self._bad(peer, f"sent more than the {expected} bytes announced")
                feed.add(chunk)
                ledger.add(peer, len(chunk))
                if sched is not None and piece is not None:
                    sched.on_progress(peer, piece, clock.now())
            ok = got == expected
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"broke off after {got} bytes: {type(exc).__name__}"
            self.src.on_failure(peer, reason)
            return _Answer("failed", reason=reason, connection=True)
        finally:
            low_water.reset()
            feed.finish(ok)
        if got != expected:
            return self._bad(peer, f"sent {got} of {expected} bytes")
        if have is None:
            with contextlib.suppress(ValueError):
                raw = headers.get(HAVE_HEADER)
                if raw is not None:
                    have = Have.decode(raw, Layout.for_size(total).count)
        return _Answer("piece", size=total, have=have, data=feed.data() or b"")

    def _bad(self, peer: str, reason: str) -> _Answer:
        self.src.on_failure(peer, reason)
        return _Answer("failed", reason=reason)


class RecvLowWater:
    """``SO_RCVLOWAT`` on one response's socket while its body arrives (``RECV_LOW_WATER_BYTES``).

    The mark is never above the bytes the body still owes the socket (``expected`` less what
    the response has taken in so far, ``content.total_bytes``), so the last bytes always wake the
    reader: chunked framing only adds bytes to what the kernel will see. Not on TLS: the TLS
    layer holds raw bytes it has read but not yet decrypted and handed on (a paused reader, a
    partial record), so the kernel can owe fewer bytes than the body and the mark never wakes
    the reader (seen: a peer fetch over HTTPS stalled until its 30 s deadline). ``reset`` puts
    the mark back to 1 before the connection goes back to the pool. Without a socket (a test
    transport, TLS) or where the option fails, it does nothing.
    """

    def __init__(self, sock: socket.socket | None, response: aiohttp.ClientResponse,
                 expected: int) -> None:
        self._sock = sock
        self._response = response
        self._expected = expected
        self._mark = 1
        self.update()

    @classmethod
    def of(cls, response: aiohttp.ClientResponse, expected: int) -> RecvLowWater:
        connection = response.connection
        transport = connection.transport if connection is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is not None and transport.get_extra_info("sslcontext") is not None:
            sock = None  # TLS: the kernel may owe fewer bytes than the body (docstring)
        return cls(sock if hasattr(sock, "setsockopt") else None, response, expected)

    def update(self) -> None:
        if self._sock is None:
            return
        owed = self._expected - self._response.content.total_bytes
        mark = max(1, min(RECV_LOW_WATER_BYTES, owed))
        if mark != self._mark:
            self._set(mark)

    def reset(self) -> None:
        if self._sock is not None and self._mark != 1:
            self._set(1)

    def _set(self, mark: int) -> None:
        assert self._sock is not None
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            self._mark = mark
        except (OSError, ValueError):  # closed meanwhile (fd -1), not TCP: read as before
            self._sock = None
