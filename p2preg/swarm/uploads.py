"""Who gets a piece from this node: the upload side of the swarm, one policy per node.

Owns: ``UploadConfig``, ``UploadPolicy``, ``Admission`` and ``Ticket``. The rules, in order:

0. **Assigned children.** A peer that asks as this node's assigned child in the piece's stripe
   (``child``: the digest owner's tracker made it so, ``swarm.tracker``) is always served: it
   takes no slot and no place (the tracker bounds the children: about one copy per node).

1. **Global slots.** At most ``upload_slots`` piece uploads run at once. Beyond that the asker
   gets busy (``BUSY_SLOTS``) with hints: the peers holding a place for that piece (rule 2:
   they have it or pass it on), none if nobody has one. Not peers that recently got *other*
   pieces of the digest (the former rule, removed after its measurement): the asker takes a
   hint as a source of that piece, and in the simulation those hints drew 85-90% of a
   swarm's 404s (``docs/benchmarks-swarm.md``, "hints on a slots-busy answer"). The asker
   backs this node off for every piece a moment (``SchedulerConfig.slots_busy_backoff_s``).
   A last-resort asker may use ``last_resort_slots`` more.
2. **Per-piece cap ("super-seeding").** Piece ``i`` of digest ``d`` goes to at most
   ``piece_cap`` distinct peers while those peers are believed to have it (their transfer is
   running or completed). The next asker is refused busy (``BUSY_PIECE``) with hints = those
   peers: it should fetch the piece from them. A peer asking again for a piece it was already
   admitted for (a resume) is admitted. A transfer that fails frees its place (that peer does
   not have the piece). Places expire after ``served_ttl_s`` and when ``forget_peer`` says the
   peer left. A **seed** (a node holding the whole blob) gives ``seed_piece_cap`` places (a
   separate knob: in an update the seed's uplink is the bottleneck), and a seed frees a
   completed place after ``seed_served_ttl_s`` (a running upload keeps its place) and
   ignores the cap while fewer than ``seed_idle_below`` uploads run (its uplink would idle).
3. **Last resort.** A requester that says it has no other source (``last_resort``) ignores the
   per-piece cap (rule 2) but not the slots (rule 1, with its extra allowance).

So every node uploads each piece about ``piece_cap`` times at most (plus last-resort requests),
however many ask: the swarm spreads each piece as a tree of fan-out ``piece_cap``.

Memory is bounded: at most ``max_digests`` digests are remembered (least recently asked
dropped), each with at most ``piece_cap`` places per piece (+ resumes of last-resort askers).

Pure: no I/O, no clock reads (``now`` is passed in), no asyncio or aiohttp.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field

from p2preg.swarm.pieces import BUSY_PIECE, BUSY_SLOTS, MAX_HINTS


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """The knobs of ``UploadPolicy`` (module docstring)."""

    piece_cap: int = 2
    #: The cap when this node holds the whole blob (a seed). 1 with cut-through (the peer
    #: given the piece passes it on while it arrives): N=16 update 3.4-3.9 s, 2: 4.6-5.0 s
    #: (without cut-through 1 was the slower: 5.2 s vs 4.1-4.3 s).
    seed_piece_cap: int = 1
    #: How long a seed keeps a completed place: a peer that got a piece from a seed a while
    #: ago (it pulled the blob earlier, say) must not block the seed's one place for minutes,
    #: or a second seed (the owner, after serving the first puller) serves nobody.
    seed_served_ttl_s: float = 2.0
    #: A seed with fewer uploads running than this ignores its per-piece cap: its uplink
    #: would idle otherwise (the end of an update, when every piece went out once).
    seed_idle_below: int = 2
    upload_slots: int = 8
    last_resort_slots: int = 4
    served_ttl_s: float = 120.0
    max_digests: int = 256
    hints: int = MAX_HINTS


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted upload; hand it back to ``UploadPolicy.release`` when it ends."""

    digest: str
    piece: int
    peer: str
    last_resort: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """The policy's answer: a ``ticket`` (serve it) or ``busy`` (``BUSY_PIECE``/``BUSY_SLOTS``)
    with ``hints`` (peer names to try instead)."""

    ticket: Ticket | None
    busy: str | None = None
    hints: tuple[str, ...] = ()

    @property
    def granted(self) -> bool:
        return self.ticket is not None


@dataclass(slots=True)
class _Digest:
    #: piece -> {peer: time its place was taken or renewed}
    served: dict[int, dict[str, float]] = field(default_factory=dict)


class UploadPolicy:
    """The upload admission of one node (module docstring)."""

    def __init__(self, config: UploadConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config or UploadConfig()
        self._rng = rng or random.Random(0)
        self._digests: OrderedDict[str, _Digest] = OrderedDict()
        self._active: dict[Ticket, int] = {}
        self.active = 0
        self.active_last_resort = 0
        self.refused_piece = 0
        self.refused_slots = 0

    def admit(self, digest: str, piece: int, peer: str, *, now: float,
              last_resort: bool = False, seed: bool = False, child: bool = False) -> Admission:
        """Whether ``peer`` may have ``piece`` of ``digest`` now (rules 0-3); ``seed``: this
        node holds the whole blob (``seed_piece_cap`` applies); ``child``: ``peer`` is its
        assigned child in the piece's stripe (rule 0)."""
        if child:
            self._state(digest)
            return self._grant(Ticket(digest, piece, peer, False))
        cfg = self.config
        cap = cfg.seed_piece_cap if seed else cfg.piece_cap
        state = self._state(digest)
        places = self._places(digest, state, piece, now,
                              cfg.seed_served_ttl_s if seed else cfg.served_ttl_s)
        slots = cfg.upload_slots + (cfg.last_resort_slots if last_resort else 0)
        if self.active >= slots:
            self.refused_slots += 1
            return Admission(None, BUSY_SLOTS, self._slot_hints(places, peer))
        idle = seed and self.active < cfg.seed_idle_below
        if peer not in places and len(places) >= cap and not last_resort and not idle:
            self.refused_piece += 1
            hints = [p for p in places if p != peer]
            self._rng.shuffle(hints)
            return Admission(None, BUSY_PIECE, tuple(hints[:cfg.hints]))
        if peer in places or len(places) < cap or idle:
            places[peer] = now
        return self._grant(Ticket(digest, piece, peer, last_resort))

    def _grant(self, ticket: Ticket) -> Admission:
        self._active[ticket] = self._active.get(ticket, 0) + 1
        self.active += 1
        self.active_last_resort += ticket.last_resort
        return Admission(ticket)

    def release(self, ticket: Ticket, *, completed: bool, now: float) -> None:
        """An admitted upload ended; ``completed``: the peer received the whole piece."""
        n = self._active.get(ticket, 0)
        if n <= 0:
            return
        if n == 1:
            del self._active[ticket]
        else:
            self._active[ticket] = n - 1
        self.active -= 1
        self.active_last_resort -= ticket.last_resort
        state = self._digests.get(ticket.digest)
        if state is None:
            return
        places = state.served.get(ticket.piece, {})
        if completed:
            if ticket.peer in places:
                places[ticket.peer] = now
        elif ticket.peer in places and self._active.get(ticket, 0) == 0:
            del places[ticket.peer]

    def forget_peer(self, peer: str) -> None:
        """``peer`` left the cluster: its places are free, it is no longer a hint."""
        for state in self._digests.values():
            for places in state.served.values():
                places.pop(peer, None)

    def forget_digest(self, digest: str) -> None:
        self._digests.pop(digest, None)

    def served_to(self, digest: str, piece: int) -> tuple[str, ...]:
        """The peers holding a place for ``piece`` (for tests and metrics)."""
        state = self._digests.get(digest)
        return tuple(state.served.get(piece, {})) if state else ()

    # -- internals --------------------------------------------------------------------------

    def _state(self, digest: str) -> _Digest:
        state = self._digests.get(digest)
        if state is None:
            state = self._digests[digest] = _Digest()
            while len(self._digests) > self.config.max_digests:
                self._digests.popitem(last=False)
        else:
            self._digests.move_to_end(digest)
        return state

    def _places(self, digest: str, state: _Digest, piece: int, now: float,
                ttl: float) -> dict[str, float]:
        """The places of ``piece``, without those older than ``ttl`` whose upload ended."""
        places = state.served.setdefault(piece, {})
        for name in [n for n, t in places.items() if now - t > ttl
                     and not self._running(digest, piece, n)]:
            del places[name]
        return places

    def _running(self, digest: str, piece: int, peer: str) -> bool:
        return any(Ticket(digest, piece, peer, lr) in self._active for lr in (False, True))

    def _slot_hints(self, places: dict[str, float], asker: str) -> tuple[str, ...]:
        names = [p for p in places if p != asker]
        self._rng.shuffle(names)
        return tuple(names[:self.config.hints])
