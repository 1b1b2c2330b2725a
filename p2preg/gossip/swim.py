"""SWIM member state: the incarnation rules, suspicion, refutation, leave and rejoin.

The table of transitions (memberlist ``state.go``), for a message about member ``m`` whose
incarnation is ``i`` while we hold ``m`` at incarnation ``j``:

=======  ===============================  ===============================================
message  about another member             about ourselves
=======  ===============================  ===============================================
alive    ``i > j``: alive (unknown: join)  ``i > ours`` or an address conflict: refute
suspect  ``i >= j`` and alive: suspect;    ``i >= ours``: refute (``inc = max(i, ours) + 1``);
         already suspect: confirm          ``i < ours``: re-announce our alive (someone
                                           missed the refutation)
dead     ``i >= j``, not dead/left: dead   ``i >= ours`` and not leaving: refute;
         (``left`` if sent by ``m``)       ``i < ours``: re-announce our alive
=======  ===============================  ===============================================

**Name conflicts**: an alive claim of our name from another gossip address is either an old
instance of this node (restarted on a new address: its state lingers) or a second live node with
the same name. Both are refuted, but at most once per ``name_conflict_refute_interval_s``, so two
live nodes do not flap in an endless refutation war: the name moves between them at most about
once per interval (push-pulls bring the other's claim back), and both keep reporting it. A
conflicting claim whose incarnation is above the one we refuted it with can only come from a
live node that refuted us back: that is a confirmed conflict, reported as a ``NameConflict``
event (the service logs an ERROR naming both addresses and counts it). Claims from our own
address with a higher incarnation (our previous run) are refuted at once, as before.

A suspicion becomes ``dead`` when its (Lifeguard, shrinking) timeout passes without a refutation.
**Verification** (Lifeguard on): a suspicion still running at ``VERIFY_AT`` fractions of the
minimum timeout makes this node ask the member directly (the core sends SUSPECT + PING, nothing
piggybacked). A live member re-announces itself and its ACK carries that alive claim back, so a
node that missed the refutation broadcast (at 1,000 nodes and 5% loss a few do, per hour) still
learns it in time. Refuted suspicions (nearly all) are gone by then and cost nothing.
Dead and left members are remembered for ``dead_reclaim_s`` and then forgotten. Every accepted
change is queued for piggybacking and reported as an event. Owns: ``MemberState``,
``MemberTable``. Must not import asyncio, sockets, time or p2preg modules outside
``p2preg.gossip``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from typing import Any

from p2preg.gossip import messages as msgs
from p2preg.gossip.awareness import Awareness
from p2preg.gossip.broadcast import BroadcastQueue
from p2preg.gossip.config import Addr, GossipConfig, format_host_port
from p2preg.gossip.events import (
    Event,
    LocalRefuted,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    NameConflict,
)
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.suspicion import Suspicion, expected_confirmations, suspicion_bounds
from p2preg.gossip.wire import MessageType

_LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
VERIFY_AT = (0.25, 0.5, 0.75)
"""When (fractions of the minimum suspicion timeout) a running suspicion is verified directly."""
_STATUS_CODE = {MemberStatus(s): i for i, s in enumerate(msgs.STATUS_CODES)}
_MAX_CONFLICT_ADDRS = 64
"""Conflicting addresses remembered per node (a bound on what a flood of claims can cost)."""


class MemberState:
    """What we know about one other member (mutable, internal)."""

    __slots__ = (
        "addr",
        "changed_at",
        "http",
        "incarnation",
        "meta",
        "name",
        "status",
        "suspicion",
        "zone",
    )

    def __init__(self, alive: msgs.Alive, now: float) -> None:
        self.name = alive.name
        self.addr: Addr = (alive.host, alive.port)
        self.http = alive.http
        self.zone = alive.zone
        self.meta = alive.meta
        self.incarnation = alive.incarnation
        self.status = MemberStatus.ALIVE
        self.changed_at = now
        self.suspicion: Suspicion | None = None

    def snapshot(self) -> Member:
        return Member(
            self.name,
            self.addr,
            self.http,
            self.zone,
            self.incarnation,
            self.status,
            0.0,
            self.meta,
        )


class MemberTable:
    """All other members, our own incarnation, and the suspicion and reclaim timers."""

    def __init__(
        self,
        config: GossipConfig,
        events: deque[Event],
        queue: BroadcastQueue,
        awareness: Awareness,
    ) -> None:
        self.config = config
        self.incarnation = 0
        self.leaving = False
        self.num_live = 1
        self._events = events
        self._queue = queue
        self._awareness = awareness
        self._members: dict[str, MemberState] = {}
        self._names: list[str] = []
        self._pos: dict[str, int] = {}
        self._suspicions: list[tuple[float, int, str, Suspicion]] = []
        self._reaps: list[tuple[float, int, str, float]] = []
        self._tiebreak = itertools.count()
        self._forgotten: list[str] = []
        self._dead: dict[str, None] = {}
        self.revived: list[str] = []
        """Dead/left members seen alive again since the core last looked (a healed partition)."""
        self._verifies: list[tuple[float, int, str, Suspicion]] = []
        # name conflicts: when we may refute a conflicting claim next, the incarnation we last
        # refuted one with, and the newest incarnation seen from each conflicting address
        self._conflict_refute_at = float("-inf")
        self._conflict_refuted_with: int | None = None
        self._conflict_claims: dict[Addr, int] = {}

    # -- queries -------------------------------------------------------------------------------

    def get(self, name: str) -> MemberState | None:
        return self._members.get(name)

    def states(self) -> list[MemberState]:
        return list(self._members.values())

    def names(self) -> list[str]:
        return list(self._names)

    def random_members(
        self,
        rng: random.Random,
        k: int,
        now: float,
        *,
        exclude: str | None = None,
        alive_only: bool = False,
        gossip_targets: bool = False,
    ) -> list[MemberState]:
        """Up to ``k`` distinct random members (alive/suspect; alive only; or gossip targets,
        which include the recently dead so they can hear and refute)."""
        names = self._names
        n = len(names)
        if n == 0 or k <= 0:
            return []
        out: list[MemberState] = []
        seen: set[str] = set()
        max_tries = 3 * n if n <= 64 else 4 * k + 32
        dead_horizon = now - self.config.gossip_to_dead_s
        for _ in range(max_tries):
            name = names[rng.randrange(n)]
            if name in seen or name == exclude:
                continue
            seen.add(name)
            m = self._members[name]
            status = m.status
            if alive_only:
                ok = status == MemberStatus.ALIVE
            elif gossip_targets:
                ok = status in _LIVE or (
                    status == MemberStatus.DEAD and m.changed_at > dead_horizon
                )
            else:
                ok = status in _LIVE
            if ok:
                out.append(m)
                if len(out) >= k:
                    break
        return out

    def local_alive(self) -> msgs.Alive:
        c = self.config
        return msgs.Alive(
            self.incarnation, c.name, c.gossip_addr[0], c.gossip_addr[1], c.http_addr, c.zone,
            dict(c.meta),
        )  # fmt: skip

    def rows(self) -> list[msgs.MemberRow]:
        """Full membership for a push-pull, ourselves first."""
        c = self.config
        me = MemberStatus.LEFT if self.leaving else MemberStatus.ALIVE
        out: list[msgs.MemberRow] = [
            [c.name, c.gossip_addr[0], c.gossip_addr[1], c.http_addr, c.zone, dict(c.meta),
             self.incarnation, _STATUS_CODE[me]]
        ]  # fmt: skip
        for m in self._members.values():
            out.append(
                [m.name, m.addr[0], m.addr[1], m.http, m.zone, m.meta, m.incarnation,
                 _STATUS_CODE[m.status]]
            )  # fmt: skip
        return out

    def next_deadline(self) -> float | None:
        """The earliest time ``expire`` or ``due_verifications`` has real work to do.

        The heaps are cleaned lazily: a top entry that is stale (its suspicion ended or was
        replaced, a reap superseded by a later status change) is popped here, so the driver is
        never woken for nothing. Each entry is popped at most once: amortized O(log n) per entry,
        no scan.
        """
        susp_heap, verifies, reaps = self._suspicions, self._verifies, self._reaps
        while susp_heap:
            when, _, name, susp = susp_heap[0]
            # A confirmation pushes an earlier entry and leaves this one: still valid then.
            if self._suspecting(name, susp) is not None and susp.deadline <= when:
                break
            heapq.heappop(susp_heap)
        while verifies and self._suspecting(verifies[0][2], verifies[0][3]) is None:
            heapq.heappop(verifies)
        while reaps and self._reapable(reaps[0][2], reaps[0][3]) is None:
            heapq.heappop(reaps)
        t: float | None = None
        for heap in (susp_heap, verifies, reaps):
            if heap and (t is None or heap[0][0] < t):
                t = heap[0][0]
        return t

    def due_verifications(self, now: float) -> list[MemberState]:
        """Suspects whose verification time has come and whose suspicion is still running."""
        out: list[MemberState] = []
        heap = self._verifies
        while heap and heap[0][0] <= now:
            _, _, name, susp = heapq.heappop(heap)
            st = self._suspecting(name, susp)
            if st is not None:
                out.append(st)
        return out

    def _suspecting(self, name: str, susp: Suspicion) -> MemberState | None:
        """``name``'s state while ``susp`` is still its running suspicion, else None (stale)."""
        st = self._members.get(name)
        if st is None or st.suspicion is not susp or st.status != MemberStatus.SUSPECT:
            return None
        return st

    def _reapable(self, name: str, changed_at: float) -> MemberState | None:
        """``name``'s state while it is still dead/left since ``changed_at``, else None."""
        st = self._members.get(name)
        if st is None or st.status in _LIVE or st.changed_at != changed_at:
            return None
        return st

    def take_forgotten(self) -> list[str]:
        """Members reclaimed (forgotten for good) since the last call."""
        out, self._forgotten = self._forgotten, []
        return out

    # -- our own lifecycle -------------------------------------------------------------------

    def announce_self(self) -> None:
        self._queue.queue(("m", self.config.name), MessageType.ALIVE, self.local_alive().encode())

    def leave(self, now: float) -> None:
        if self.leaving:
            return
        self.leaving = True
        self.num_live -= 1
        dead = msgs.Dead(self.incarnation, self.config.name, self.config.name)
        self._queue.queue(("m", self.config.name), MessageType.DEAD, dead.encode())

    def rejoin(self, now: float) -> None:
        if not self.leaving:
            return
        self.leaving = False
        self.num_live += 1
        self.incarnation += 1
        self.announce_self()

    def _refute(self, accused_incarnation: int) -> None:
        self.incarnation = max(self.incarnation, accused_incarnation) + 1
        self._awareness.apply_delta(1)
        self.announce_self()
        self._events.append(LocalRefuted(self.incarnation))

    # -- messages ----------------------------------------------------------------------------

    def on_alive(self, m: msgs.Alive, now: float, *, rebroadcast: bool = True) -> None:
        """Apply an alive claim; ``rebroadcast=False`` for state merged from a push-pull (old
        news to the cluster: re-gossiping it all would make a join storm cost O(N^2))."""
        cfg = self.config
        if m.name == cfg.name:
            if (m.host, m.port) != cfg.gossip_addr:
                self._on_name_conflict(m, now)
            elif not self.leaving and m.incarnation > self.incarnation:
                self._refute(m.incarnation)
            return
        st = self._members.get(m.name)
        if st is None:
            st = MemberState(m, now)
            self._members[m.name] = st
            self._pos[m.name] = len(self._names)
            self._names.append(m.name)
            self.num_live += 1
            self._events.append(MemberJoined(st.snapshot()))
            if rebroadcast:
                self._queue.queue(("m", m.name), MessageType.ALIVE, m.encode())
            return
        if m.incarnation <= st.incarnation:
            return
        old = st.status
        changed = (st.addr, st.http, st.zone, st.meta) != ((m.host, m.port), m.http, m.zone, m.meta)
        st.addr, st.http, st.zone, st.meta = (m.host, m.port), m.http, m.zone, m.meta
        st.incarnation = m.incarnation
        st.suspicion = None
        if old != MemberStatus.ALIVE:
            self._set_status(st, MemberStatus.ALIVE, now)
        if old in (MemberStatus.DEAD, MemberStatus.LEFT):
            self.revived.append(st.name)
            self._events.append(MemberJoined(st.snapshot()))
        elif old == MemberStatus.SUSPECT:
            self._events.append(MemberAlive(st.name, st.incarnation))
        elif changed:
            self._events.append(MemberUpdated(st.snapshot()))
        if rebroadcast or old != MemberStatus.ALIVE:
            self._queue.queue(("m", m.name), MessageType.ALIVE, m.encode())

    def _on_name_conflict(self, m: msgs.Alive, now: float) -> None:
        """An alive claim of our name from another address (see the module docstring)."""
        theirs = (m.host, m.port)
        seen = self._conflict_claims.get(theirs)
        if seen is None or m.incarnation > seen:  # a new claim, not a copy of one seen
            if seen is None and len(self._conflict_claims) >= _MAX_CONFLICT_ADDRS:
                self._conflict_claims.pop(next(iter(self._conflict_claims)))
            self._conflict_claims[theirs] = m.incarnation
            refuted_with = self._conflict_refuted_with
            if refuted_with is not None and m.incarnation > refuted_with:
                self._events.append(NameConflict(
                    self.config.name, format_host_port(*self.config.gossip_addr),
                    format_host_port(*theirs), m.incarnation))
        # Refuted even when seen before (a push-pull brings the other node's claim back), but
        # at most once per interval: a bounded-rate exchange, never a war.
        if self.leaving or m.incarnation < self.incarnation or now < self._conflict_refute_at:
            return
        self._conflict_refute_at = now + self.config.name_conflict_refute_interval_s
        self._refute(m.incarnation)
        self._conflict_refuted_with = self.incarnation

    def _stale_accusation(self, accused_incarnation: int) -> bool:
        """Handle an accusation about ourselves; True if it was older than our incarnation.

        A stale one means its sender missed our refutation: re-announce (same incarnation), so
        the alive claim travels again, on the very next packet (the ACK of a buddy probe).
        """
        if self.leaving:
            return True
        if accused_incarnation >= self.incarnation:
            return False
        self.announce_self()
        return True

    def on_suspect(self, m: msgs.Suspect, now: float) -> None:
        if m.name == self.config.name:
            if not self._stale_accusation(m.incarnation):
                self._refute(m.incarnation)
            return
        st = self._members.get(m.name)
        if st is None or m.incarnation < st.incarnation:
            return
        if st.status == MemberStatus.SUSPECT:
            susp = st.suspicion
            if susp is not None and susp.confirm(m.accuser):
                heapq.heappush(
                    self._suspicions, (susp.deadline, next(self._tiebreak), st.name, susp)
                )
                self._queue.queue(("m", m.name), MessageType.SUSPECT, m.encode())
            return
        if st.status != MemberStatus.ALIVE:
            return
        st.incarnation = m.incarnation
        self._start_suspicion(st, m.accuser, now)

    def suspect_by_probe(self, name: str, now: float) -> None:
        """Our probe of ``name`` failed (no ack directly or indirectly)."""
        st = self._members.get(name)
        if st is not None and st.status in _LIVE:
            self.on_suspect(msgs.Suspect(st.incarnation, name, self.config.name), now)

    def on_dead(self, m: msgs.Dead, now: float) -> None:
        if m.name == self.config.name:
            if not self._stale_accusation(m.incarnation):
                self._refute(m.incarnation)
            return
        st = self._members.get(m.name)
        if st is None or m.incarnation < st.incarnation:
            return
        if st.status in (MemberStatus.DEAD, MemberStatus.LEFT):
            return
        st.incarnation = m.incarnation
        st.suspicion = None
        left = m.accuser == m.name
        self._set_status(st, MemberStatus.LEFT if left else MemberStatus.DEAD, now)
        if left:
            self._events.append(MemberLeft(st.name, st.incarnation))
        else:
            self._events.append(MemberDead(st.name, st.incarnation, m.accuser))
        self._queue.queue(("m", m.name), MessageType.DEAD, m.encode())
        heapq.heappush(
            self._reaps, (now + self.config.dead_reclaim_s, next(self._tiebreak), st.name, now)
        )

    def merge_rows(self, rows: list[Any], now: float) -> None:
        """Merge a peer's full membership (push-pull): its dead become suspects here. Only the
        sender's own row (the first) is re-gossiped: that is how a join spreads."""
        for i, (name, host, port, http, zone, meta, inc, code) in enumerate(rows):
            status = msgs.STATUS_CODES[code]
            if status == "alive":
                alive = msgs.Alive(inc, name, host, port, http, zone, meta)
                self.on_alive(alive, now, rebroadcast=i == 0)
            elif status == "left":
                self.on_dead(msgs.Dead(inc, name, name), now)
            else:
                if status == "suspect" and name not in self._members:
                    # A member we never heard of, suspected over there: learn it (as alive)
                    # first, or we would ignore it until the next push-pull.
                    alive = msgs.Alive(inc, name, host, port, http, zone, meta)
                    self.on_alive(alive, now, rebroadcast=False)
                self.on_suspect(msgs.Suspect(inc, name, self.config.name), now)

    # -- timers ------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Turn timed-out suspicions into deaths; forget long-dead members."""
        heap = self._suspicions
        while heap and heap[0][0] <= now:
            _, _, name, susp = heapq.heappop(heap)
            st = self._suspecting(name, susp)
            if st is None or susp.deadline > now:
                continue
            self.on_dead(msgs.Dead(st.incarnation, name, self.config.name), now)
        reaps = self._reaps
        while reaps and reaps[0][0] <= now:
            _, _, name, changed_at = heapq.heappop(reaps)
            if self._reapable(name, changed_at) is None:
                continue
            self._remove(name)
            self._forgotten.append(name)

    # -- internals -----------------------------------------------------------------------------

    def _start_suspicion(self, st: MemberState, accuser: str, now: float) -> None:
        cfg = self.config
        n = self.num_live
        min_s, max_s = suspicion_bounds(
            cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, n, cfg.probe_interval_s
        )
        if cfg.lifeguard:
            k = expected_confirmations(cfg.suspicion_mult, n)
        else:
            k, max_s = 0, min_s
        susp = Suspicion(accuser, now, k, min_s, max_s)
        st.suspicion = susp
        self._set_status(st, MemberStatus.SUSPECT, now)
        heapq.heappush(self._suspicions, (susp.deadline, next(self._tiebreak), st.name, susp))
        if cfg.lifeguard:
            for frac in VERIFY_AT:
                entry = (now + frac * min_s, next(self._tiebreak), st.name, susp)
                heapq.heappush(self._verifies, entry)
        self._events.append(MemberSuspect(st.name, st.incarnation, accuser))
        suspect = msgs.Suspect(st.incarnation, st.name, accuser)
        self._queue.queue(("m", st.name), MessageType.SUSPECT, suspect.encode())

    def add_known(self, alive: msgs.Alive, now: float) -> None:
        """Insert a member silently (no event, no broadcast): simulations seeding a cluster."""
        if alive.name == self.config.name or alive.name in self._members:
            return
        self._members[alive.name] = MemberState(alive, now)
        self._pos[alive.name] = len(self._names)
        self._names.append(alive.name)
        self.num_live += 1

    def random_dead(self, rng: random.Random) -> MemberState | None:
        """A random failed (not left) member, for a reconnect attempt after a partition."""
        if not self._dead:
            return None
        return self._members[rng.choice(list(self._dead))]

    def _set_status(self, st: MemberState, status: MemberStatus, now: float) -> None:
        if status == MemberStatus.DEAD:
            self._dead[st.name] = None
        else:
            self._dead.pop(st.name, None)
        was_live = st.status in _LIVE
        is_live = status in _LIVE
        if was_live and not is_live:
            self.num_live -= 1
        elif is_live and not was_live:
            self.num_live += 1
        st.status = status
        st.changed_at = now

    def _remove(self, name: str) -> None:
        st = self._members.pop(name)
        self._dead.pop(name, None)
        if st.status in _LIVE:
            self.num_live -= 1
        idx = self._pos.pop(name)
        last = self._names.pop()
        if last != name:
            self._names[idx] = last
            self._pos[last] = idx
