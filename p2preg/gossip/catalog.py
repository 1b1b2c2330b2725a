"""The digest catalog: which node has, or is fetching, which blob (Scuttlebutt-style state).

Every node owns one versioned map ``key -> (version, value)``: a digest with a state code
(``have``/``fetching``/dropped tombstone), plus ``LOAD_KEY`` with its load. Each local change takes
the next version number of that node, tagged with the node's boot ``generation`` (a restarted node's
newer generation replaces its old state). Replicas track a *watermark* per node: every current entry
with a version at or below it is known. Gossip deltas advance it when they arrive in order; push-
pull anti-entropy sends exactly the entries above the other side's watermark and then lifts it.

Tombstone collection (floors). A tombstone only matters to a replica that still holds an older
``have``/``fetching`` of the same key. Every copy of a node's state (the owner's and each replica's)
collects the tombstones it has held for longer than a grace period (``collect_tombstones``) and
raises that node's *floor* to the highest version it removed. The invariant of every copy is:

    for each key, the copy holds the owner's current entry whenever that entry's version is at or
    below the copy's watermark, except tombstones at or below the copy's floor, which may be
    absent; and ``floor <= watermark``.

Anti-entropy keeps it: a sender whose floor is at or below the receiver's watermark sends the usual
incremental block (the receiver saw every collected version already); a sender whose floor is
above it cannot prove which tombstones the receiver missed, so it sends its *full* state of that
node with the floor (a 5-element block). The receiver then drops every entry at or below the
block's watermark that the block lacks (index updated, a change reported so routing forgets it),
takes the rest and adopts the floor. A key absent locally never accepts a version at or below the
floor (that version was seen and superseded; accepting it would resurrect a stale ``have``).
Correctness does not depend on the grace: it only keeps full resyncs rare (a replica behind by
more than the grace is rare). Replicas collect only tombstones at or below their watermark.

Collection is amortised O(1) per tombstone: tombstones are queued when stored, stamped at the next
``collect_tombstones(now)`` (so no clock is needed elsewhere) and popped in stamp order, at most
``budget`` per call. The index ``digest -> set(node)`` answers lookups in O(holders). Liveness and
ordering are not decided here (the core filters and sorts). Owns: ``Catalog``. Must not import
asyncio, sockets or other p2preg modules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from p2preg.gossip.messages import (
    LOAD_KEY,
    STATE_DROPPED,
    STATE_FETCHING,
    STATE_HAVE,
    CatalogDelta,
    EntriesRow,
    VersionRow,
)

Change = tuple[str, str, float]
"""``(node, key, new value)`` of an applied change (``STATE_DROPPED`` when a key disappears)."""

_Tomb = tuple[str, int, int, str]
"""A stored tombstone awaiting collection: ``(node, generation, version, key)``."""


class _NodeState:
    __slots__ = ("entries", "floor", "generation", "pending", "watermark")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.watermark = 0
        self.floor = 0
        self.pending: set[int] = set()
        self.entries: dict[str, tuple[int, float]] = {}

    def see(self, version: int) -> None:
        if version <= self.watermark:
            return
        if version == self.watermark + 1:
            self.watermark = version
            pending = self.pending
            while self.watermark + 1 in pending:
                self.watermark += 1
                pending.discard(self.watermark)
        else:
            self.pending.add(version)

    def lift(self, watermark: int) -> None:
        if watermark > self.watermark:
            self.watermark = watermark
            pending = {v for v in self.pending if v > watermark}
            while self.watermark + 1 in pending:
                self.watermark += 1
                pending.discard(self.watermark)
            self.pending = pending

    def superseded(self, key: str, version: int) -> bool:
        """A version of a key we do not hold that we saw and collected (must not come back)."""
        return version <= self.floor and key not in self.entries


class Catalog:
    """All nodes' catalog state as known here, including our own (authoritative) state."""

    __slots__ = (
        "_fetching",
        "_fresh_tombs",
        "_have",
        "_nodes",
        "_tombs",
        "_track_tombs",
        "full_resyncs_applied",
        "full_resyncs_sent",
        "local_name",
        "tombstones_collected",
    )

    def __init__(self, local_name: str, generation: int, *, collect: bool = True) -> None:
        """``collect=False`` keeps tombstones forever (no collection queue is kept either)."""
        self.local_name = local_name
        self._track_tombs = collect
        self._nodes: dict[str, _NodeState] = {local_name: _NodeState(generation)}
        self._have: dict[str, set[str]] = {}
        self._fetching: dict[str, set[str]] = {}
        self._fresh_tombs: list[_Tomb] = []
        self._tombs: deque[tuple[float, _Tomb]] = deque()
        self.tombstones_collected = 0
        """Tombstones removed by ``collect_tombstones`` (own and replicas')."""
        self.full_resyncs_sent = 0
        """Full-state blocks sent because our floor was above the peer's watermark."""
        self.full_resyncs_applied = 0
        """Full-state blocks received and applied (a node's state replaced)."""

    # -- local changes ------------------------------------------------------------------------

    @property
    def local_version(self) -> int:
        return self._nodes[self.local_name].watermark

    @property
    def local_generation(self) -> int:
        return self._nodes[self.local_name].generation

    def set_local(self, key: str, value: float) -> CatalogDelta | None:
        """Change our own entry; the delta to broadcast, or None if nothing changed."""
        st = self._nodes[self.local_name]
        cur = st.entries.get(key)
        if cur is not None and cur[1] == value:
            return None
        if cur is None and key != LOAD_KEY and value == STATE_DROPPED:
            return None
        version = st.watermark + 1
        st.watermark = version
        self._store(self.local_name, st, key, version, value)
        return CatalogDelta(self.local_name, st.generation, version, key, value)

    # -- remote state ---------------------------------------------------------------------------

    def apply(self, delta: CatalogDelta) -> bool:
        """Apply a gossiped delta; True if it changed what we know (worth re-gossiping)."""
        if delta.node == self.local_name:
            return False
        st = self._state_for(delta.node, delta.generation)
        if st is None:
            return False
        cur = st.entries.get(delta.key)
        st.see(delta.version)
        if cur is not None and cur[0] >= delta.version:
            return False
        if cur is None and st.superseded(delta.key, delta.version):
            return False
        self._store(delta.node, st, delta.key, delta.version, delta.value)
        return True

    def versions(self) -> list[VersionRow]:
        """``[[node, generation, watermark], ...]`` for every node we hold state of."""
        return [[node, st.generation, st.watermark] for node, st in self._nodes.items()]

    def entries_newer_than(self, versions: Iterable[VersionRow]) -> list[EntriesRow]:
        """What a peer that reported ``versions`` lacks: entries above its watermarks.

        Where our floor for a node is above the peer's watermark, the block is that node's full
        state plus our floor (``[node, generation, watermark, rows, floor]``): the peer may have
        missed a tombstone we no longer hold and must replace its copy.
        """
        theirs = {row[0]: (row[1], row[2]) for row in versions}
        out: list[EntriesRow] = []
        for node, st in self._nodes.items():
            known = theirs.get(node)
            if known is None:
                if st.watermark == 0:
                    continue  # nothing to tell
                since = 0
            elif known[0] < st.generation:
                since = 0  # even an empty block: it retires the old generation there
            elif known[0] == st.generation and known[1] < st.watermark:
                since = known[1]
            else:
                continue
            if st.floor > since:
                rows = [[v, key, value] for key, (v, value) in st.entries.items()]
                out.append([node, st.generation, st.watermark, rows, st.floor])
                self.full_resyncs_sent += 1
            else:
                rows = [[v, key, value] for key, (v, value) in st.entries.items() if v > since]
                out.append([node, st.generation, st.watermark, rows])
        return out

    def apply_entries(
        self, blocks: Iterable[EntriesRow], accept: set[str] | None = None
    ) -> list[Change]:
        """Apply push-pull entry blocks (only for nodes in ``accept`` when given).

        A block with a floor (5th element, > 0) is the sender's full state of that node: local
        entries at or below its watermark that it lacks are dropped (and reported as changes).
        """
        changes: list[Change] = []
        for block in blocks:
            node, generation, watermark, rows = block[0], block[1], block[2], block[3]
            floor = block[4] if len(block) > 4 else 0
            if node == self.local_name or (accept is not None and node not in accept):
                continue
            st = self._state_for(node, generation)
            if st is None:
                continue
            if floor > 0:
                self._drop_missing(node, st, watermark, rows, changes)
                self.full_resyncs_applied += 1
            for version, key, value in rows:
                cur = st.entries.get(key)
                if cur is None and st.superseded(key, version):
                    continue
                if cur is None or cur[0] < version:
                    self._store(node, st, key, version, value)
                    changes.append((node, key, value))
            st.lift(watermark)
            st.floor = max(st.floor, min(floor, st.watermark))
        return changes

    def collect_tombstones(self, now: float, grace_s: float, budget: int) -> bool:
        """Remove tombstones held for at least ``grace_s`` (at most ``budget`` of them).

        Tombstones stored since the previous call are stamped with ``now`` first. Returns True
        when due tombstones remain (call again soon), False when the backlog is done.
        """
        if self._fresh_tombs:
            self._tombs.extend((now, tomb) for tomb in self._fresh_tombs)
            self._fresh_tombs = []
        tombs = self._tombs
        deadline = now - grace_s
        requeue: list[_Tomb] = []
        for _ in range(budget):
            if not tombs or tombs[0][0] > deadline:
                break
            _, tomb = tombs.popleft()
            node, generation, version, key = tomb
            st = self._nodes.get(node)
            if st is None or st.generation != generation:
                continue  # forgotten, or replaced by a newer generation
            if st.entries.get(key) != (version, STATE_DROPPED):
                continue  # overwritten since
            if version > st.watermark:
                requeue.append(tomb)  # arrived out of order: collect once the gap is filled
                continue
            del st.entries[key]
            st.floor = max(st.floor, version)
            self.tombstones_collected += 1
        self._fresh_tombs.extend(requeue)
        return bool(tombs) and tombs[0][0] <= deadline

    def forget(self, node: str) -> list[str]:
        """Drop everything about ``node`` (dead, left, reaped); the digests it held or fetched."""
        if node == self.local_name:
            return []
        st = self._nodes.pop(node, None)
        if st is None:
            return []
        touched = []
        for key, (_, value) in st.entries.items():
            if key != LOAD_KEY and value != STATE_DROPPED:
                self._unindex(node, key, value)
                touched.append(key)
        return touched

    # -- queries ----------------------------------------------------------------------------------

    def nodes_with(self, digest: str, state: int = STATE_HAVE) -> set[str]:
        index = self._have if state == STATE_HAVE else self._fetching
        return index.get(digest, set())

    def state_of(self, node: str, key: str) -> float | None:
        st = self._nodes.get(node)
        if st is None:
            return None
        cur = st.entries.get(key)
        return None if cur is None else cur[1]

    def load_of(self, node: str) -> float:
        value = self.state_of(node, LOAD_KEY)
        return 0.0 if value is None else float(value)

    def digests_of(self, node: str) -> dict[str, int]:
        """``digest -> state code`` of ``node`` (tombstones excluded)."""
        st = self._nodes.get(node)
        if st is None:
            return {}
        return {
            k: int(v) for k, (_, v) in st.entries.items() if k != LOAD_KEY and v != STATE_DROPPED
        }

    def floor_of(self, node: str) -> int:
        """The highest collected version of ``node``'s entries known here (0: none)."""
        st = self._nodes.get(node)
        return 0 if st is None else st.floor

    def digest_count(self) -> int:
        """Distinct digests some node has or is fetching (tombstones excluded); O(fetching)."""
        have = self._have
        return len(have) + sum(1 for digest in self._fetching if digest not in have)

    def entry_count(self) -> int:
        """Entries held for all nodes, tombstones and load entries included (memory, O(nodes))."""
        return sum(len(st.entries) for st in self._nodes.values())

    def tombstone_count(self) -> int:
        """Tombstones held for all nodes (O(entries): for tests and occasional metrics)."""
        return sum(
            1
            for st in self._nodes.values()
            for key, (_, value) in st.entries.items()
            if key != LOAD_KEY and value == STATE_DROPPED
        )

    def known_nodes(self) -> list[str]:
        return list(self._nodes)

    def fingerprint(self, nodes: Iterable[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """A comparable summary of the live digest states of ``nodes`` (are replicas equal?)."""
        out = []
        for node in sorted(nodes):
            st = self._nodes.get(node)
            if st is None:
                continue
            items = tuple(
                sorted(
                    (k, int(v))
                    for k, (_, v) in st.entries.items()
                    if k != LOAD_KEY and v != STATE_DROPPED
                )
            )
            if items:
                out.append((node, items))
        return tuple(out)

    # -- internals ----------------------------------------------------------------------------

    def _state_for(self, node: str, generation: int) -> _NodeState | None:
        st = self._nodes.get(node)
        if st is None or generation > st.generation:
            if st is not None:
                self.forget(node)
            st = _NodeState(generation)
            self._nodes[node] = st
            return st
        if generation < st.generation:
            return None
        return st

    def _drop_missing(
        self,
        node: str,
        st: _NodeState,
        watermark: int,
        rows: list[Any],
        changes: list[Change],
    ) -> None:
        """Full resync: drop our entries at or below ``watermark`` that the sender lacks."""
        present = {row[1] for row in rows}
        gone = [
            key
            for key, (version, _) in st.entries.items()
            if version <= watermark and key not in present
        ]
        for key in gone:
            _, value = st.entries.pop(key)
            if key != LOAD_KEY and value != STATE_DROPPED:
                self._unindex(node, key, value)
                changes.append((node, key, STATE_DROPPED))

    def _store(self, node: str, st: _NodeState, key: str, version: int, value: float) -> None:
        old = st.entries.get(key)
        st.entries[key] = (version, value)
        if key == LOAD_KEY:
            return
        if old is not None and old[1] != STATE_DROPPED:
            self._unindex(node, key, old[1])
        if value == STATE_HAVE:
            self._have.setdefault(key, set()).add(node)
        elif value == STATE_FETCHING:
            self._fetching.setdefault(key, set()).add(node)
        elif value == STATE_DROPPED and self._track_tombs:
            self._fresh_tombs.append((node, st.generation, version, key))

    def _unindex(self, node: str, key: str, value: float) -> None:
        index = self._have if value == STATE_HAVE else self._fetching
        holders = index.get(key)
        if holders is not None:
            holders.discard(node)
            if not holders:
                del index[key]
