"""The digest catalog: which node has, or is fetching, which blob (Scuttlebutt-style state).

Every node owns one versioned map ``key -> (version, value)``: a digest with a state code
(``have``/``fetching``/dropped tombstone), plus ``LOAD_KEY`` with its load. Each local change takes
the next version number of that node, tagged with the node's boot ``generation`` (a restarted node's
newer generation replaces its old state). Replicas track a *watermark* per node: every current entry
with a version at or below it is known. Gossip deltas advance it when they arrive in order; push-
pull anti-entropy sends exactly the entries above the other side's watermark and then lifts it.

The index ``digest -> set(node)`` answers lookups in O(holders). Liveness and ordering are not
decided here (the core filters and sorts). Owns: ``Catalog``. Must not import asyncio, sockets or
other p2preg modules.
"""

from __future__ import annotations

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
"""``(node, key, new value)`` of an applied change."""


class _NodeState:
    __slots__ = ("entries", "generation", "pending", "watermark")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.watermark = 0
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


class Catalog:
    """All nodes' catalog state as known here, including our own (authoritative) state."""

    __slots__ = ("_fetching", "_have", "_nodes", "local_name")

    def __init__(self, local_name: str, generation: int) -> None:
        self.local_name = local_name
        self._nodes: dict[str, _NodeState] = {local_name: _NodeState(generation)}
        self._have: dict[str, set[str]] = {}
        self._fetching: dict[str, set[str]] = {}

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
        self._store(delta.node, st, delta.key, delta.version, delta.value)
        return True

    def versions(self) -> list[VersionRow]:
        """``[[node, generation, watermark], ...]`` for every node we hold state of."""
        return [[node, st.generation, st.watermark] for node, st in self._nodes.items()]

    def entries_newer_than(self, versions: Iterable[VersionRow]) -> list[EntriesRow]:
        """What a peer that reported ``versions`` lacks: entries above its watermarks."""
        theirs = {row[0]: (row[1], row[2]) for row in versions}
        out: list[EntriesRow] = []
        for node, st in self._nodes.items():
            known = theirs.get(node)
            if known is None:
                if st.watermark == 0:
                    continue  # nothing to tell
                floor = 0
            elif known[0] < st.generation:
                floor = 0  # even an empty block: it retires the old generation there
            elif known[0] == st.generation and known[1] < st.watermark:
                floor = known[1]
            else:
                continue
            rows = [[v, key, value] for key, (v, value) in st.entries.items() if v > floor]
            out.append([node, st.generation, st.watermark, rows])
        return out

    def apply_entries(
        self, blocks: Iterable[EntriesRow], accept: set[str] | None = None
    ) -> list[Change]:
        """Apply push-pull entry blocks (only for nodes in ``accept`` when given)."""
        changes: list[Change] = []
        for node, generation, watermark, rows in blocks:
            if node == self.local_name or (accept is not None and node not in accept):
                continue
            st = self._state_for(node, generation)
            if st is None:
                continue
            for version, key, value in rows:
                cur = st.entries.get(key)
                if cur is None or cur[0] < version:
                    self._store(node, st, key, version, value)
                    changes.append((node, key, value))
            if st.generation == generation:
                st.lift(watermark)
        return changes

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

    def _unindex(self, node: str, key: str, value: float) -> None:
        index = self._have if value == STATE_HAVE else self._fetching
        holders = index.get(key)
        if holders is not None:
            holders.discard(node)
            if not holders:
                del index[key]
