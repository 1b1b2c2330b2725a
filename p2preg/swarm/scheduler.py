"""Which piece to ask of which peer: the download side of the swarm, one ``Scheduler`` per fill.

Owns: ``SchedulerConfig``, ``Scheduler``, ``Request`` and the peer role names it uses. The
caller (the node's fill, or the simulator) tells it the peers (``set_peers``), what they
answered (``on_piece``, ``on_progress``, ``on_busy``, ``on_missing``, ``on_failed``) and what
they reported (``on_availability``, ``on_load``); it answers ``next_requests(now)`` and
``next_deadline()`` and, through ``expire(now)``, which requests stalled. The rules, in order:

1. **Limits.** At most ``max_requests`` requests in flight, at most ``per_peer`` to one peer,
   at most one per piece. Only pieces in the **window** ``[prefix, prefix + window_pieces)``
   are asked for (``prefix``: the pieces received contiguously from 0, handed to the writer;
   pieces above it wait in memory, so the window bounds the memory of a fill). While the node
   streams a blob from its upstream (the caller says so: ``next_requests(now,
   upstream_busy=True)``; it is that digest's owner), at most ``upstream_busy_requests``: its
   downlink is shared fairly by its flows, so every request of this fill takes a share from
   the upstream stream, and the whole swarm of that digest waits on that stream (Kraken's case
   in the simulator, two layers with different owners: p50 1.24x -> 1.16x,
   ``docs/benchmarks-swarm.md``).
2. **Piece choice**, among missing pieces of the window not in flight that some eligible peer
   is known to have (it reported it, or a busy answer hinted it for that piece): those among
   the first ``in_order_pieces`` missing pieces of the window lowest first (the prefix keeps
   streaming to the clients that follow the fill), then the others rarest first (fewest
   peers known to have it), then random.
3. **Peer choice** for that piece: peers known to have it that are not backed off, fewest of
   our requests in flight to them, then the least loaded (the uploads it reported in its last
   answer, ``on_load`` from ``P2preg-Load``, within ``load_ttl_s``; not reported yet or older:
   0; a peer whose answers carry no load, an older node: the mean of the fresh loads the
   others reported, so it ranks after the less loaded and before the more loaded instead of
   looking idle and drawing every request; no gain in Kraken's case, 1.16x, but the lab's
   update N=16 p50 1.29x -> 1.24x), then peers
   hinted for that piece, newest hint first (a
   busy answer's hints are fresher than old availability, and following the newest descends
   the piece's tree towards peers with free places), fetchers before holders and the owner
   (spread load off the seeds), random tie-break.
4. **Nobody known to have a piece** (lowest first): ask the **owner** (it long-polls on its
   growing upstream fill) unless it has ``per_peer`` of our requests already or said busy for
   that piece; else a peer **hinted** for that piece by a busy answer (it has the piece or is
   receiving it) that is not backed off for it; else, once the piece was refused busy (or
   there is no owner but this node), a **probe**: a random peer not known to have it, not
   backed off for it (it answers the piece, or busy with hints, or missing with its
   availability: either way this node learns where pieces are); at most one probe per piece
   per ``probe_interval_s`` (a 404 comes back at once: without it a node would ask every
   peer in turn, and on a loaded machine each answer costs both ends CPU).
5. **Backoff.** Busy -> that peer is not asked for that piece for ``busy_backoff_s``, doubled
   with each busy answer for that piece (at most 16x: its places stay taken); missing
   (it answered 404 with its availability) -> not for ``missing_backoff_s``, and it is no
   longer a hint for that piece (a peer hinted as receiving it that could not pass it on:
   without this, relays hinted to each other asked one another in a cycle, each 404 after
   the bounded first-byte wait, while holders of the piece sat idle; seen in the simulator,
   Kraken's case N=20); failed -> the
   peer is not asked at all for ``failure_backoff_s``. A piece refused busy for
   ``last_resort_after_s`` with no other source is asked with ``last_resort`` of a peer that
   has it, was hinted for it, or the owner (busy backoff ignored, failure backoff kept).
   A busy answer for want of upload slots (``slots``: the peer refuses every piece now, not
   only this one) backs the peer off for every piece for ``slots_busy_backoff_s`` (like a
   failure, without counting one): asking it for the next piece would be refused too.
0. **Parents first** (coordinated forwarding, ``swarm.tracker``; only once the caller gave
   parents: ``set_parents``). Piece ``i`` belongs to stripe ``i % stripes``; the digest's
   owner assigned this fill a parent per stripe. The missing pieces of the window whose stripe
   has a parent are asked of that parent only, lowest first, marked ``child`` (the parent
   serves an assigned child past its piece cap and slots, and waits for a piece it will get),
   at most ``parent_requests`` (1) at once per parent (the requests go out early and wait there,
   so each piece flows down its stripe's tree with about one request per host; the parent
   sends one child's answers one at a time, so with 2 the second is a pipeline, not a split
   link, and it waits in line for its first byte up to ``owner_wait_s``). A child
   request that fails, stalls, or is answered busy or missing **loses** that parent: the piece
   falls back to rules 1-6 for good, the stripe's other pieces until a new parent comes, and
   ``want_join`` reports the loss to the owner (``P2preg-Lost``). Joins: ``want_join(now)``
   says when to (re-)join (at once, then after ``rejoin_first_s``, doubling up to
   ``rejoin_max_s``: the tracker may have moved this fill's place; and at once after a loss).
   Until the first answer (at most ``join_wait_s``, or a failed join) the fill asks nobody:
   one round trip, and no early request takes a seed's uplink from the trees.
6. **Stall.** A request that received no byte for ``stall_s`` (a long-poll on the owner for a
   piece it is not known to have: ``owner_wait_s``) is cancelled by ``expire`` and counts as
   a failure of that peer; the piece goes back to the pool.

Peers are names; the caller maps names to addresses and tells the scheduler the new owner when
membership changes (``set_peers``). Availability only grows during a fill, so what a peer
reported is a lower bound and stays usable. A peer that leaves is dropped with its requests
(the caller cancels them).

Pure: no I/O, no clock reads (``now`` is passed in), randomness from the ``random.Random``
given; must not import asyncio, aiohttp or anything of the node.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from p2preg.swarm.pieces import Have, Layout

ROLE_HOLDER = "holder"
ROLE_FETCHER = "fetcher"
ROLE_OWNER = "owner"
#: A live member with no known relation to the digest (it may be named in hints).
ROLE_MEMBER = "member"
#: Float rounding between a backoff's timer and the comparison it stands for (``_pick``).
_MARGIN_S = 1e-9
_ROLE_RANK = {ROLE_FETCHER: 0, ROLE_MEMBER: 0, ROLE_HOLDER: 1, ROLE_OWNER: 1}


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The knobs of ``Scheduler`` (module docstring)."""

    max_requests: int = 8
    upstream_busy_requests: int = 2
    per_peer: int = 2
    window_pieces: int = 32
    in_order_pieces: int = 4
    busy_backoff_s: float = 0.5
    missing_backoff_s: float = 0.5
    probe_interval_s: float = 0.25
    failure_backoff_s: float = 5.0
    last_resort_after_s: float = 2.0
    stall_s: float = 3.0
    owner_wait_s: float = 10.0
    #: Rule 3: a peer's reported upload load (``on_load``) is used for this long after the
    #: answer that carried it; 0 ignores loads (the choice before loads were advertised).
    load_ttl_s: float = 1.0
    #: Rule 5: how long a busy answer for want of slots backs the peer off for every piece
    #: (0: only for that piece, as any busy answer). With slots-busy hints naming the piece's
    #: places (``swarm.uploads`` rule 1): requests per served piece 2.1-2.9x fewer in Kraken's
    #: case (8 MiB pieces, N=20-100), p50 no worse (docs/benchmarks-swarm.md, "hints on a
    #: slots-busy answer").
    slots_busy_backoff_s: float = 0.1
    #: Rule 0: join the owner's tracker and ask the stripe parents first (False: rules 1-6
    #: only, the swarm before coordinated forwarding).
    tracker: bool = True
    stripes: int = 2
    #: Rule 0: requests in flight to one parent. 1: a stripe's pieces come one after the
    #: other (the other stripe's parent fills the downlink in the round trip between two).
    #: Kraken N=100 in the simulator p50 1.05x with 2-8 at once, 1.016x with 1; the lab's
    #: update N=16 (real nodes) 1.51-1.82x with 4, 1.28-1.31x with 1. 2 in the parent's line
    #: for the child (``p2p.child_lines``: a pipeline, no request round trip between two
    #: pieces; the simulator with the lab's ~100 ms per-hop round trip: update 1.25x -> 1.08x)
    #: measured slower on the lab: 1.74-1.82x vs 1.33-1.35x (docs/benchmarks-swarm.md).
    parent_requests: int = 1
    rejoin_first_s: float = 0.05
    rejoin_max_s: float = 2.0
    join_wait_s: float = 0.5


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``peer`` for ``piece``; ``last_resort``: tell it we have no other source."""

    peer: str
    piece: int
    last_resort: bool = False
    child: bool = False
    """The asker is ``peer``'s assigned child in the piece's stripe (rule 0)."""


@dataclass(slots=True)
class _Peer:
    role: str
    have: Have = field(default_factory=Have)
    in_flight: int = 0
    failed_until: float = -math.inf
    failures: int = 0
    #: piece -> time before which this peer is not asked for it (busy or missing)
    piece_until: dict[int, float] = field(default_factory=dict)
    #: piece -> how often this peer said busy for it (the backoff doubles each time)
    busy_count: dict[int, int] = field(default_factory=dict)
    #: the uploads in progress it reported last (``P2preg-Load``) and when; None: its last
    #: answer carried none (an older node, until an answer carries one)
    load: int | None = 0
    load_at: float = -math.inf


@dataclass(slots=True)
class _Flight:
    request: Request
    started: float
    deadline: float
    flowing: bool = False


class Scheduler:
    """The piece requests of one fill (module docstring)."""

    def __init__(self, layout: Layout, *, self_name: str,
                 config: SchedulerConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.layout = layout
        self.self_name = self_name
        self.config = config or SchedulerConfig()
        self._rng = rng or random.Random(0)
        self._peers: dict[str, _Peer] = {}
        self._owner: str | None = None
        self._complete = bytearray(layout.count)
        self._prefix = 0
        self._buffered: set[int] = set()
        self._flights: dict[int, _Flight] = {}
        #: piece -> {peer hinted for it: when (a counter; the newest hint is tried first)}
        self._hinted: dict[int, dict[str, int]] = {}
        self._hint_seq = 0
        self._refused_since: dict[int, float] = {}
        #: piece -> when it was last probed for (rule 4: one probe per piece per interval)
        self._probed: dict[int, float] = {}
        self._contributors: set[str] = set()
        #: piece -> peers known to have it (pieces this node still misses; full peers apart)
        self._avail: dict[int, set[str]] = {}
        self._full: set[str] = set()
        #: backoff expiries, a heap (stale entries only cost a spurious wake-up)
        self._timers: list[float] = []
        self._now = -math.inf
        #: A pick found nothing to ask and nothing changed since: no pick finds anything before
        #: this time (the next backoff expiry). Every method that changes what ``_pick`` reads
        #: resets it to -inf (``_changed``).
        self._quiet_until = -math.inf
        #: Rule 0: stripe -> parent; parents lost since the last join; pieces asked of a
        #: parent that failed them (rules 1-6 from then on); the join schedule.
        self._parents: dict[int, str] = {}
        self._lost: dict[int, str] = {}
        self._off_parent: set[int] = set()
        self._withdrawn: list[Request] = []
        self._join_at = 0.0 if self.config.tracker else math.inf
        #: Rule 0: no request before the first join's answer (or this time; set by the first
        #: ``want_join``: a caller that never joins is not held back).
        self._joined_by = -math.inf
        self._first_join = True
        self._join_out = False
        self._rejoin_gap = self.config.rejoin_first_s
        self.parent_losses = 0

    # -- what the caller tells it ------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, str], owner: str | None) -> list[Request]:
        """The live peers with their roles (``ROLE_*``) and the digest's owner (None: none;
        the owner may be this node). Returns the requests to peers that left (cancel them)."""
        self._changed()
        self._owner = owner if owner != self.self_name else None
        dropped: list[Request] = []
        for name in list(self._peers):
            if name not in peers:
                dropped += [f.request for f in self._flights.values() if f.request.peer == name]
                del self._peers[name]
                self._full.discard(name)
                for names in self._avail.values():
                    names.discard(name)
        for req in dropped:
            self._flights.pop(req.piece, None)
        for stripe, parent in list(self._parents.items()):
            if parent not in self._peers:
                self._lose_parent(stripe)
        for name, role in peers.items():
            if name == self.self_name:
                continue
            state = self._peers.get(name)
            if state is None:
                state = self._peers[name] = _Peer(role)
            state.role = role
            if role == ROLE_HOLDER:
                self._learn(name, state, Have.full(self.layout))
        for piece, hinted in self._hinted.items():
            self._hinted[piece] = {n: t for n, t in hinted.items() if n in self._peers}
        return dropped

    def on_availability(self, peer: str, have: Have, now: float) -> None:
        """``peer`` reported ``have`` (from any answer's ``P2preg-Have``)."""
        self._now = max(self._now, now)
        self._changed()
        state = self._peers.get(peer)
        if state is not None:
            self._learn(peer, state, have)

    def on_load(self, peer: str, load: int | None, now: float) -> None:
        """``peer`` reported ``load`` uploads in progress (any answer's ``P2preg-Load``);
        None: its answer carried ``P2preg-Have`` but no load (an older node, rule 3)."""
        self._now = max(self._now, now)
        state = self._peers.get(peer)
        if state is not None and now >= state.load_at:
            state.load, state.load_at = load, now

    def on_progress(self, peer: str, piece: int, now: float) -> None:
        """Bytes of ``piece`` arrived from ``peer`` (resets its stall timer)."""
        self._now = max(self._now, now)
        flight = self._flights.get(piece)
        if flight is not None and flight.request.peer == peer:
            flight.deadline = now + self.config.stall_s
            flight.flowing = True
            if self._refused_since.pop(piece, None) is not None:
                self._changed()

    def on_piece(self, peer: str, piece: int, now: float) -> None:
        """``piece`` arrived whole from ``peer`` (or from anywhere: ``peer`` may be "")."""
        self._now = max(self._now, now)
        self._changed()
        self._end_flight(piece, peer)
        state = self._peers.get(peer)
        if state is not None:
            state.failures = 0
            self._learn(peer, state, Have.of(0, [piece]))
        if peer:
            self._contributors.add(peer)
        self._refused_since.pop(piece, None)
        self._hinted.pop(piece, None)
        if not self._complete[piece]:
            self._complete[piece] = 1
            self._avail.pop(piece, None)
            self._buffered.add(piece)
            while self._prefix < self.layout.count and self._complete[self._prefix]:
                self._buffered.discard(self._prefix)
                self._prefix += 1

    def on_busy(self, peer: str, piece: int, hints: Iterable[str], now: float, *,
                slots: bool = False) -> None:
        """``peer`` refused ``piece`` as busy and named ``hints`` (peers to try instead);
        ``slots``: for want of upload slots (it refuses every piece now; rule 5)."""
        self._now = max(self._now, now)
        self._changed()
        self._child_refused(piece, peer)
        self._end_flight(piece, peer)
        state = self._peers.get(peer)
        if state is not None:
            refusals = state.busy_count.get(piece, 0)
            state.busy_count[piece] = refusals + 1
            state.piece_until[piece] = self._timer(
                now + self.config.busy_backoff_s * 2 ** min(refusals, 4))
            backoff = self.config.slots_busy_backoff_s
            if slots and backoff > 0 and now + backoff > state.failed_until:
                state.failed_until = self._timer(now + backoff)
        if piece not in self._refused_since:
            self._refused_since[piece] = now
            self._timer(now + self.config.last_resort_after_s)
        known = [h for h in hints if h in self._peers and h != peer]
        if known:
            hinted = self._hinted.setdefault(piece, {})
            for name in known:
                self._hint_seq += 1
                hinted[name] = self._hint_seq

    def on_missing(self, peer: str, piece: int, have: Have | None, now: float) -> None:
        """``peer`` does not have ``piece`` yet (404 with its availability ``have``)."""
        self._now = max(self._now, now)
        self._changed()
        self._child_refused(piece, peer)
        self._end_flight(piece, peer)
        state = self._peers.get(peer)
        if state is None:
            return
        if have is not None:
            self._learn(peer, state, have)
        state.piece_until[piece] = self._timer(now + self.config.missing_backoff_s)
        hinted = self._hinted.get(piece)
        if hinted is not None:
            hinted.pop(peer, None)  # its hint is stale: it neither has nor passes on the piece

    def on_failed(self, peer: str, piece: int | None, now: float) -> None:
        """A request to ``peer`` failed (refused, broke off, wrong answer, stalled)."""
        self._now = max(self._now, now)
        self._changed()
        if piece is not None:
            self._child_refused(piece, peer)
            self._end_flight(piece, peer)
        else:
            for stripe in [s for s, p in self._parents.items() if p == peer]:
                self._lose_parent(stripe)
        state = self._peers.get(peer)
        if state is not None:
            state.failures += 1
            state.failed_until = self._timer(now + self.config.failure_backoff_s)

    def set_parents(self, parents: Mapping[int, str], now: float) -> None:
        """The owner's tracker answered a join: ``parents`` by stripe (rule 0). Parents that
        are not peers (the caller could not map the name) are skipped."""
        self._join_ended(now)
        old = self._parents
        self._parents = {s: p for s, p in parents.items()
                         if p in self._peers and p != self.self_name
                         and 0 <= s < self.config.stripes and s not in self._lost}
        # A moved place: child requests still waiting at the old parent are withdrawn (it
        # would serve them past its budget), not counted as failures.
        for piece, flight in list(self._flights.items()):
            req = flight.request
            stripe = piece % self.config.stripes
            if req.child and not flight.flowing and old.get(stripe) == req.peer \
                    and self._parents.get(stripe) != req.peer:
                self._end_flight(piece, req.peer)
                self._withdrawn.append(req)
        self._join_at = self._timer(now + self._rejoin_gap)
        self._rejoin_gap = min(self._rejoin_gap * 2, self.config.rejoin_max_s)

    def on_join_failed(self, now: float) -> None:
        """The join did not get an answer (the owner failed or refused): retry later."""
        self._join_ended(now)
        self._join_at = self._timer(now + self._rejoin_gap)

    def _join_ended(self, now: float) -> None:
        """The join out is over (answered or failed): requests may go out (rule 0)."""
        self._now = max(self._now, now)
        self._changed()
        self._join_out = False
        self._joined_by = -math.inf

    def want_join(self, now: float) -> dict[int, str] | None:
        """Rule 0: send a join now? Returns the parents lost since the last one (``{}``: a
        plain join or refresh), counted as sent; None: not now."""
        self._now = max(self._now, now)
        if not self.config.tracker or self._join_out or self.done:
            return None
        if not self._lost and now < self._join_at:
            return None
        self._join_out = True
        if self._first_join:
            self._first_join = False
            self._joined_by = self._timer(now + self.config.join_wait_s)
        lost, self._lost = self._lost, {}
        return lost

    @property
    def parents(self) -> dict[int, str]:
        return dict(self._parents)

    def expire(self, now: float) -> list[Request]:
        """Cancel the requests that stalled (rule 6) and those to a parent that lost its place
        (rule 0); the caller aborts them."""
        self._now = max(self._now, now)
        stalled = [f.request for f in self._flights.values() if f.deadline <= now]
        for req in stalled:
            self.on_failed(req.peer, req.piece, now)
        if self._withdrawn:
            stalled += self._withdrawn
            self._withdrawn = []
        return stalled

    # -- what it answers -------------------------------------------------------------------

    def next_requests(self, now: float, *, upstream_busy: bool = False) -> list[Request]:
        """The requests to send now (rules 1-5), already counted as in flight;
        ``upstream_busy``: this node streams a blob from its upstream now (rule 1)."""
        self._now = max(self._now, now)
        out: list[Request] = []
        limit = self.config.max_requests
        if upstream_busy:
            limit = min(limit, self.config.upstream_busy_requests)
        if now < self._joined_by:
            return out  # rule 0: the first join's answer is on its way
        while len(self._flights) < limit:
            req = self._pick(now)
            if req is None:
                break
            self._start(req, now)
            out.append(req)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time after the last ``now`` seen at which ``expire`` or
        ``next_requests`` may have something new (None: only an answer can change things)."""
        while self._timers and self._timers[0] <= self._now:
            heapq.heappop(self._timers)
        times = [f.deadline for f in self._flights.values() if f.deadline > self._now]
        if self.config.tracker and not self._join_out and not self.done:
            times.append(max(self._join_at, self._now) if not self._lost else self._now)
        if self._timers:
            times.append(self._timers[0])
        return min(times) if times else None

    @property
    def done(self) -> bool:
        return self._prefix >= self.layout.count

    @property
    def prefix(self) -> int:
        """Pieces received contiguously from piece 0."""
        return self._prefix

    @property
    def owner(self) -> str | None:
        return self._owner

    def have(self) -> Have:
        """This node's availability (what it reports to its peers)."""
        return Have(self._prefix, frozenset(self._buffered))

    def in_flight(self) -> list[Request]:
        return [f.request for f in self._flights.values()]

    def missing(self) -> list[int]:
        return [i for i in range(self._prefix, self.layout.count) if not self._complete[i]]

    def source_states(self, piece: int, now: float) -> dict[str, str]:
        """Diagnostics: the peers known to have ``piece`` or hinted for it, each with why it
        is not asked now: ``per_peer`` (our requests to it are at the limit), ``failed``,
        ``backoff`` (busy or missing for that piece), or ``usable``."""
        names = self._avail.get(piece, set()) | self._full | self._hinted.get(piece, {}).keys()
        out = {}
        for name in sorted(names):
            state = self._peers[name]
            out[name] = ("per_peer" if state.in_flight >= self.config.per_peer
                         else "failed" if state.failed_until > now
                         else "backoff" if not self._free_for(state, piece, now)
                         else "usable")
        return out

    def contributors(self) -> frozenset[str]:
        """Peers that delivered at least one piece (blamed together if the digest is wrong)."""
        return frozenset(self._contributors)

    def failures(self, peer: str) -> int:
        """Failures of ``peer`` since it last delivered a piece."""
        state = self._peers.get(peer)
        return state.failures if state else 0

    def peers(self) -> dict[str, str]:
        return {name: s.role for name, s in self._peers.items()}

    # -- internals -------------------------------------------------------------------------

    def _changed(self) -> None:
        self._quiet_until = -math.inf

    def _start(self, req: Request, now: float) -> None:
        self._changed()
        state = self._peers[req.peer]
        state.in_flight += 1
        wait = self.config.stall_s
        if (req.peer == self._owner or req.child) and not self._has(req.peer, req.piece):
            wait = self.config.owner_wait_s
        elif req.child and state.in_flight > 1:
            wait = self.config.owner_wait_s  # in line behind our other piece there (rule 0)
        self._flights[req.piece] = _Flight(req, now, now + wait)

    def _child_refused(self, piece: int, peer: str) -> None:
        """Rule 0: a child request for ``piece`` to ``peer`` ended without the piece."""
        flight = self._flights.get(piece)
        if flight is None or flight.request.peer != peer or not flight.request.child:
            return
        self._off_parent.add(piece)
        stripe = piece % self.config.stripes
        if self._parents.get(stripe) == peer:
            self._lose_parent(stripe)

    def _lose_parent(self, stripe: int) -> None:
        self._lost[stripe] = self._parents.pop(stripe)
        self.parent_losses += 1
        self._changed()

    def _end_flight(self, piece: int, peer: str) -> None:
        flight = self._flights.get(piece)
        if flight is None or flight.request.peer != peer:
            return
        del self._flights[piece]
        state = self._peers.get(peer)
        if state is not None:
            state.in_flight -= 1

    def _missing_in_window(self) -> list[int]:
        end = min(self.layout.count, self._prefix + self.config.window_pieces)
        return [i for i in range(self._prefix, end) if not self._complete[i]]

    def _window(self) -> list[int]:
        end = min(self.layout.count, self._prefix + self.config.window_pieces)
        return [i for i in range(self._prefix, end)
                if not self._complete[i] and i not in self._flights]

    def _usable(self, name: str, now: float) -> _Peer | None:
        state = self._peers.get(name)
        if state is None or state.in_flight >= self.config.per_peer or state.failed_until > now:
            return None
        return state

    def _free_for(self, state: _Peer, piece: int, now: float) -> bool:
        return state.piece_until.get(piece, -math.inf) <= now

    def _pick(self, now: float) -> Request | None:
        if now < self._quiet_until:
            return None  # nothing changed since a pick found nothing, no backoff expired
        req = self._pick_now(now)
        if req is None:
            # Until the next backoff expiry: every time rules 3-5 compare ``now`` with is one
            # of ``_timers``, up to float rounding (a probe's ``now - probed < interval`` can
            # still hold at its timer ``probed + interval``), hence the margin both ways.
            timers = self._timers
            while timers and timers[0] <= now - _MARGIN_S:
                heapq.heappop(timers)
            self._quiet_until = timers[0] - _MARGIN_S if timers else math.inf
        return req

    def _pick_now(self, now: float) -> Request | None:
        pieces = self._window()
        if self._parents:
            req, pieces = self._pick_parent(pieces, now)
            if req is not None:
                return req
        # Rule 5 first: a piece refused long enough with no free source blocks the window.
        for piece in pieces:
            since = self._refused_since.get(piece)
            if since is not None and now - since >= self.config.last_resort_after_s \
                    and not self._has_source(piece, now) and self._fallback(piece, now) is None:
                req = self._last_resort(piece, now)
                if req is not None:
                    return req
        # Rules 2-3: pieces some eligible peer is known to have (the peers looked up for the
        # chosen piece only).
        sourced = [p for p in pieces if self._has_source(p, now)]
        if sourced:
            zone = set(self._missing_in_window()[:self.config.in_order_pieces])
            first = [p for p in sourced if p in zone]
            rest = [p for p in sourced if p not in zone]
            rarity = {p: len(self._avail.get(p, ())) for p in rest}
            keyed = [(p, self._rng.random()) for p in rest]
            keyed.sort(key=lambda t: (rarity[t[0]], t[1]))
            piece = first[0] if first else keyed[0][0]
            return Request(self._best_peer(self._sources(piece, now), piece), piece)
        # Rule 4: nobody known to have them; the owner, then hints.
        for piece in pieces:
            req = self._fallback(piece, now)
            if req is not None:
                if self._is_probe(req):
                    self._probed[piece] = now
                    self._timer(now + self.config.probe_interval_s)
                return req
        return None

    def _pick_parent(self, pieces: list[int], now: float) -> tuple[Request | None, list[int]]:
        """Rule 0: the lowest piece its stripe's parent can take now; else the pieces that
        have no parent (for rules 1-6; pieces waiting for their parent are not among them)."""
        rest = []
        stripes = self.config.stripes
        for piece in pieces:
            parent = self._parents.get(piece % stripes)
            if parent is None or piece in self._off_parent:
                rest.append(piece)
                continue
            state = self._peers[parent]
            if state.in_flight < self.config.parent_requests and state.failed_until <= now \
                    and self._free_for(state, piece, now):
                return Request(parent, piece, child=True), rest
        return None, rest

    def _is_probe(self, req: Request) -> bool:
        return req.peer != self._owner and req.peer not in self._hinted.get(req.piece, ())

    def _sources(self, piece: int, now: float) -> list[str]:
        names = self._avail.get(piece, set())
        if self._full:
            names = names | self._full
        hinted = self._hinted.get(piece)
        if hinted:
            names = names | hinted.keys()
        return [n for n in names if (s := self._usable(n, now)) is not None
                and self._free_for(s, piece, now)]

    def _has_source(self, piece: int, now: float) -> bool:
        """Whether ``_sources(piece, now)`` is not empty (stops at the first usable one)."""
        per_peer = self.config.per_peer
        peers = self._peers
        for names in (self._avail.get(piece, ()), self._full, self._hinted.get(piece, ())):
            for name in names:
                s = peers.get(name)
                if s is not None and s.failed_until <= now \
                        and s.in_flight < per_peer \
                        and s.piece_until.get(piece, -math.inf) <= now:
                    return True
        return False

    def _has(self, peer: str, piece: int) -> bool:
        return peer in self._full or peer in self._avail.get(piece, ())

    def _learn(self, name: str, state: _Peer, have: Have) -> None:
        old = state.have
        new = state.have = old.merge(have)
        if name in self._full:
            return
        if new.prefix >= self.layout.count:
            self._full.add(name)
            for names in self._avail.values():
                names.discard(name)
            return
        gained = [i for i in range(old.prefix, new.prefix) if i not in old.extra]
        gained += new.extra - old.extra
        for i in gained:
            if i >= self._prefix and not self._complete[i]:
                self._avail.setdefault(i, set()).add(name)

    def _timer(self, when: float) -> float:
        heapq.heappush(self._timers, when)
        return when

    def _best_peer(self, names: list[str], piece: int) -> str:
        hinted = self._hinted.get(piece, {})
        silent = any(self._peers[n].load is None for n in names)  # no P2preg-Load (rule 3)
        unknown = self._unknown_load() if silent else 0.0
        keyed = [(s.in_flight, self._load(s, unknown),
                  -hinted.get(n, 0), _ROLE_RANK.get(s.role, 0), self._rng.random(), n)
                 for n in sorted(names)  # sorted: a seeded run repeats across processes
                 if (s := self._peers[n]) is not None]
        return min(keyed)[-1]

    def _load(self, state: _Peer, unknown: float = 0.0) -> float:
        """The uploads ``state`` reported, if fresh (rule 3; not yet or stale: 0; none in its
        answers: ``unknown``)."""
        if state.load is None:
            return unknown
        if self._now - state.load_at > self.config.load_ttl_s:
            return 0
        return state.load

    def _unknown_load(self) -> float:
        """What a peer whose answers carry no load counts as (rule 3): the mean of the fresh
        loads the other peers reported (0 if none)."""
        ttl, now = self.config.load_ttl_s, self._now
        fresh = [s.load for s in self._peers.values()
                 if s.load is not None and now - s.load_at <= ttl]
        return sum(fresh) / len(fresh) if fresh else 0.0

    def _fallback(self, piece: int, now: float) -> Request | None:
        owner = self._owner
        if owner is not None:
            state = self._usable(owner, now)
            if state is not None and self._free_for(state, piece, now):
                return Request(owner, piece)
        hinted = [n for n in sorted(self._hinted.get(piece, ()))
                  if (s := self._usable(n, now)) is not None and self._free_for(s, piece, now)]
        if hinted:
            return Request(self._best_peer(hinted, piece), piece)
        if owner is not None and piece not in self._refused_since:
            return None
        probed = self._probed.get(piece)
        if probed is not None and now - probed < self.config.probe_interval_s:
            return None
        probes = [n for n, st in self._peers.items()
                  if n != owner and not self._has(n, piece) and self._usable(n, now) is not None
                  and self._free_for(st, piece, now)]
        if probes:
            return Request(probes[self._rng.randrange(len(probes))], piece)
        return None

    def _last_resort(self, piece: int, now: float) -> Request | None:
        names = sorted(self._avail.get(piece, set()) | self._full)
        names += sorted(self._hinted.get(piece, ()))
        if self._owner is not None:
            names.append(self._owner)
        usable = [n for n in dict.fromkeys(names) if self._usable(n, now) is not None]
        if not usable:
            return None
        return Request(self._best_peer(usable, piece), piece, last_resort=True)
