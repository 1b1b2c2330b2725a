"""A flow-level network: links with a capacity, flows across links, max-min fair rates.

Owns: ``FlowNetwork`` and ``Flow``. A *link* is one direction of one host's access link (its
uplink or its downlink) or the origin's uplink, with a capacity in bytes per second. A *flow*
is one transfer of a known number of bytes over a fixed set of links (a piece from a peer:
the sender's uplink and the receiver's downlink). Every link is shared max-min fairly among
the flows that cross it (progressive filling, also called water-filling): the link whose fair
share ``remaining capacity / unfixed flows`` is the smallest is the bottleneck of those flows,
they get that share, their other links lose it, and so on until every flow has a rate.

A flow may be **fed** by another (``start(..., feeder=f)``): a relay that passes on bytes it is
still receiving (cut-through). Its rate never exceeds its feeder's while the feeder runs (the
constraint ``rate(relay) <= rate(feeder)`` is part of the max-min fair allocation: a feeder
fixed at share ``s`` fixes its unfixed relays at ``s`` too), so, started later with nothing,
a relay never gets ahead of the bytes it has and never finishes before its feeder. A feeder
that completes frees its relays of the constraint; one that is cancelled leaves them to the
caller (``followers``).

Two engines compute the same allocation (``FlowNetwork(engine=...)``): ``"reference"``, the
progressive filling as first written, kept to check the other against, and ``"fast"`` (the
default), the same steps in the same order with less work per step (``_fill``), so every rate,
byte count and finish time is the same float (``tests/swarm/test_flows_engines.py``; the
simulator gives the same run to the bit, ``tests/swarm/test_sim.py``).

Time is a float passed in by the caller (no clock is read). Rates are recomputed only when the
flow set changed (``reallocate``, called by the driver once per batch of events), so a flow
started between two reallocations transfers nothing until the next one. Bytes are tracked
lazily: a flow remembers its bytes at the last reallocation and its rate since then (the fast
engine: at the last reallocation that changed its rate, ``FlowNetwork.sync``).

Pure computation: must not import asyncio, sockets, time or anything of the node.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

_EPS_BYTES = 1e-6
_FINISH_DRIFT = 1e-8
"""The fast engine's margin: a flow's finish time as the reference recomputes it at a later
reallocation (its bytes brought up at each, the rate unchanged) differs from an earlier one only
by rounding, by at most ~4e-16 x (reallocations since) x its whole transfer time (size / rate):
a heap entry ``finish - (1e-9 + _FINISH_DRIFT x size / rate)`` is a lower bound for 25 M
reallocations (``_settle`` checks it and raises if not)."""
ENGINES = ("reference", "fast")


@dataclass(eq=False, slots=True)
class Flow:
    """One transfer of ``size`` bytes over ``links``; ``tag`` is the driver's own data."""

    id: int
    links: tuple[int, ...]
    size: float
    tag: object = None
    done: float = 0.0
    """Bytes transferred up to ``since``."""
    rate: float = 0.0
    """Bytes per second since ``since`` (0 until the first reallocation after the start)."""
    since: float = 0.0
    finish_at: float = float("inf")
    active: bool = True
    feeder: Flow | None = None
    """The flow this one relays (None: the sender holds the bytes)."""
    followers: list[Flow] = field(default_factory=list)
    """The flows relaying this one while it runs."""
    epoch: int = 0
    """The fast engine: the reallocation that last fixed the rate (its "fixed" mark)."""
    synced: int = 0
    """The fast engine: ``done``, ``since`` and ``finish_at`` are the reference's as of this
    reallocation (the rate has not changed since; ``FlowNetwork.sync`` brings them up)."""
    entry: tuple[float, int, Flow] | None = field(default=None, repr=False)
    """The fast engine: this flow's live entry in a finish heap."""
    net: FlowNetwork | None = field(default=None, repr=False)
    """The fast engine's network (``bytes_at`` syncs first); None for the reference."""

    def bytes_at(self, now: float) -> float:
        if self.net is not None:
            self.net.sync(self)
        return min(self.size, self.done + self.rate * (now - self.since))


@dataclass(slots=True)
class _Link:
    name: Hashable
    capacity: float
    flows: dict[Flow, None] = field(default_factory=dict)
    """The flows across the link, in start order (a dict: iteration order is deterministic,
    a set of flows would iterate in memory-address order and runs would not repeat)."""
    sent: float = 0.0
    """Bytes of completed or cancelled flows that crossed the link (see ``FlowNetwork.carried``)."""


class FlowNetwork:
    """Links with capacities and the flows across them, with max-min fair rates."""

    def __init__(self, engine: str = "fast") -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}")
        self.engine = engine
        self._links: list[_Link] = []
        self._by_name: dict[Hashable, int] = {}
        self._flows: dict[Flow, None] = {}
        self._busy: dict[int, None] = {}
        """The links some flow crosses (a reallocation looks at these only)."""
        self._ids = itertools.count()
        self._finish: list[tuple[float, int, Flow]] = []
        """The reference: every moving flow's finish time, rebuilt at each reallocation. The
        fast engine: the finish times exact as of the last reallocation (flows whose rate it
        changed, and flows ``_settle`` synced)."""
        self._bound: list[tuple[float, int, Flow]] = []
        """The fast engine: lower bounds of the other flows' finish times (``_FINISH_DRIFT``)."""
        self._times = [0.0]
        """The fast engine: the time of each reallocation (index: ``reallocations``)."""
        self._settled = True
        """The fast engine: ``_finish``'s top is the next completion (``_settle``); a removal
        or a reallocation clears it."""
        self.now = 0.0
        self.dirty = False
        """True when the flow set changed since the last ``reallocate``."""
        self.reallocations = 0

    # -- topology --------------------------------------------------------------------------------

    def add_link(self, name: Hashable, capacity_bytes_s: float) -> int:
        """Add a link (``name`` must be new) and return its index."""
        if name in self._by_name:
            raise ValueError(f"link {name!r} exists")
        if capacity_bytes_s <= 0:
            raise ValueError("capacity must be positive")
        self._by_name[name] = len(self._links)
        self._links.append(_Link(name, float(capacity_bytes_s)))
        return self._by_name[name]

    def link(self, name: Hashable) -> int:
        return self._by_name[name]

    def carried(self, name: Hashable) -> float:
        """Bytes that crossed link ``name`` so far (finished flows, plus progress of live ones)."""
        link = self._links[self._by_name[name]]
        return link.sent + sum(f.bytes_at(self.now) for f in link.flows)

    @property
    def flows(self) -> frozenset[Flow]:
        return frozenset(self._flows)

    # -- flows -----------------------------------------------------------------------------------

    def start(self, links: Iterable[int], size_bytes: float, tag: object = None,
              feeder: Flow | None = None) -> Flow:
        """Start a flow now; it gets a rate at the next ``reallocate``. ``feeder``: the running
        flow whose bytes this one passes on (module docstring)."""
        link_ids = tuple(dict.fromkeys(links))
        if not link_ids:
            raise ValueError("a flow crosses at least one link")
        flow = Flow(next(self._ids), link_ids, float(size_bytes), tag, since=self.now,
                    synced=self.reallocations)
        if self.engine == "fast":
            flow.net = self
        if feeder is not None and feeder.active:
            flow.feeder = feeder
            feeder.followers.append(flow)
        self._flows[flow] = None
        for i in link_ids:
            self._links[i].flows[flow] = None
            self._busy[i] = None
        self.dirty = True
        return flow

    def cancel(self, flow: Flow) -> float:
        """Stop ``flow`` now; returns the bytes it had transferred."""
        if not flow.active:
            return flow.done
        flow.done = flow.bytes_at(self.now)
        self._remove(flow)
        return flow.done

    def _remove(self, flow: Flow) -> None:
        flow.active = False
        if flow.feeder is not None:
            with contextlib.suppress(ValueError):
                flow.feeder.followers.remove(flow)
            flow.feeder = None
        for follower in flow.followers:
            follower.feeder = None
        flow.followers = []
        flow.entry = None
        self._settled = False
        flow.rate = 0.0
        flow.since = self.now
        self._flows.pop(flow, None)
        for i in flow.links:
            link = self._links[i]
            link.flows.pop(flow, None)
            link.sent += flow.done
            if not link.flows:
                self._busy.pop(i, None)
        self.dirty = True

    def next_finish(self) -> float | None:
        """When the next flow completes at the current rates (None: no flow is moving)."""
        if self.engine == "fast":
            self._settle()
            return self._finish[0][0] if self._finish else None
        heap = self._finish
        while heap and not (heap[0][2].active and heap[0][0] == heap[0][2].finish_at):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def advance(self, now: float) -> list[Flow]:
        """Move time to ``now``; return the flows that completed by then (removed, in order)."""
        if now < self.now:
            raise ValueError("time goes forward")
        self.now = now
        done: list[Flow] = []
        heap = self._finish
        if self.engine == "fast":
            while True:
                self._settle()
                if not heap or heap[0][0] > now:
                    return done
                flow = heapq.heappop(heap)[2]
                flow.done = flow.size
                self._remove(flow)
                done.append(flow)
        while heap and heap[0][0] <= now:
            at, _, flow = heapq.heappop(heap)
            if not flow.active or at != flow.finish_at:
                continue
            flow.done = flow.size
            self._remove(flow)
            done.append(flow)
        return done

    # -- max-min fair rates ----------------------------------------------------------------------

    def reallocate(self) -> None:
        """Recompute every flow's max-min fair rate (progressive filling) as of ``self.now``:
        bring each flow's bytes up to now at its old rate, fix the new rates, and each flow's
        finish time at its new rate."""
        self.reallocations += 1
        self.dirty = False
        if self.engine == "fast":
            self._times.append(self.now)
            self._settled = False
            exact = self._finish
            self._finish = self._fill(self.now, self.reallocations)
            self._demote(exact)
            return
        now = self.now
        for flow in self._flows:
            flow.done = min(flow.size, flow.done + flow.rate * (now - flow.since))
            flow.since = now
            flow.rate = -1.0  # not fixed yet
        self._fill_reference()
        finish: list[tuple[float, int, Flow]] = []
        for flow in self._flows:
            left = flow.size - flow.done
            if left <= _EPS_BYTES:
                flow.finish_at = now
            elif flow.rate > 0:
                flow.finish_at = now + left / flow.rate
            else:
                flow.finish_at = float("inf")
                continue
            finish.append((flow.finish_at, flow.id, flow))
        heapq.heapify(finish)
        self._finish = finish

    def sync(self, flow: Flow) -> None:
        """The fast engine: bring ``flow.done``, ``since`` and ``finish_at`` to the values the
        reference has after the last reallocation (replaying its per-reallocation updates at
        the flow's unchanged rate: the same floats). A no-op for the reference engine."""
        k, last = flow.synced, self.reallocations
        if k >= last or not flow.active or flow.net is None:
            return
        done, rate, size, since = flow.done, flow.rate, flow.size, flow.since
        for t in self._times[k + 1:last + 1]:
            done += rate * (t - since)
            if done > size:  # min(size, ...), as the reference's
                done = size
            since = t
        flow.done, flow.since, flow.synced = done, since, last
        left = size - done
        if left <= _EPS_BYTES:
            flow.finish_at = since
        elif rate > 0:
            flow.finish_at = since + left / rate
        else:
            flow.finish_at = float("inf")

    def _demote(self, exact: list[tuple[float, int, Flow]]) -> None:
        """The fast engine, after a reallocation: the finish times that were exact before it and
        were not recomputed by it become lower bounds (``_FINISH_DRIFT``)."""
        bound = self._bound
        push = heapq.heappush
        for entry in exact:
            flow = entry[2]
            if flow.entry is entry:
                low = entry[0] - 1e-9
                if flow.rate > 0:
                    low -= _FINISH_DRIFT * flow.size / flow.rate
                flow.entry = entry = (low, entry[1], flow)
                push(bound, entry)
        if len(bound) > 2 * len(self._flows) + 256:
            self._bound = [e for e in bound if e[2].entry is e]
            heapq.heapify(self._bound)

    def _settle(self) -> None:
        """The fast engine: make the top of ``_finish`` the flow that completes first, as the
        reference would pick it (smallest finish time, then id): while a lower bound comes
        before it, sync that flow and move its exact finish time to ``_finish``."""
        if self._settled:
            return
        self._settled = True
        exact, bound = self._finish, self._bound
        pop = heapq.heappop
        while True:
            while exact and exact[0][2].entry is not exact[0]:
                pop(exact)
            while bound and bound[0][2].entry is not bound[0]:
                pop(bound)
            if not bound:
                return
            if exact:
                first, lowest = exact[0], bound[0]
                if first[0] < lowest[0] or (first[0] == lowest[0] and first[1] < lowest[1]):
                    return
            low, _, flow = pop(bound)
            self.sync(flow)
            if flow.finish_at < low:
                raise AssertionError(f"flow {flow.id}: finish {flow.finish_at!r} < bound {low!r}")
            if flow.finish_at == float("inf"):
                flow.entry = None
                continue
            flow.entry = entry = (flow.finish_at, flow.id, flow)
            heapq.heappush(exact, entry)

    def _fill_reference(self) -> None:
        """Progressive filling as first written (kept as the reference the fast engine is
        checked against, ``tests/swarm/test_flows_engines.py``): a heap of links by fair share,
        an entry pushed on every change of a link's share, stale entries skipped."""
        remaining: dict[int, float] = {}
        unfixed: dict[int, int] = {}
        heap: list[tuple[float, int]] = []
        links = self._links
        for i in self._busy:
            link = links[i]
            remaining[i] = link.capacity
            unfixed[i] = len(link.flows)
            heap.append((link.capacity / len(link.flows), i))
        heapq.heapify(heap)
        while heap:
            share, i = heapq.heappop(heap)
            n = unfixed.get(i, 0)
            if n == 0 or share != max(remaining[i], 0.0) / n:
                continue  # stale entry
            unfixed[i] = 0
            for flow in links[i].flows:
                if flow.rate >= 0:
                    continue
                fix = [flow]
                while fix:
                    f = fix.pop()
                    f.rate = share
                    fix += [r for r in f.followers if r.rate < 0]
                    for j in f.links:
                        if j == i:
                            continue
                        remaining[j] -= share
                        unfixed[j] -= 1
                        if unfixed[j]:
                            heapq.heappush(heap, (max(remaining[j], 0.0) / unfixed[j], j))

    def _fill(self, now: float, epoch: int) -> list[tuple[float, int, Flow]]:
        """Progressive filling, the fast way, with the reference's results to the bit; returns
        the heap of finish times.

        The reference pops, at every step, the link with the smallest ``(fair share, index)``
        among those with unfixed flows, and fixes its flows (and their relays, depth first)
        in start order. So does this, with fewer heap operations: a link's entry is pushed
        only when its share drops below its lowest entry (``low``); an entry popped below the
        link's current share is pushed again at that share. Every entry is at most its link's
        share, so the entry popped that equals its link's share is the smallest pair. Link
        state lives in lists indexed by link, not dicts, and a flow is visited once: when it is
        fixed, its bytes are brought up to now at its old rate and its finish time set at the
        new one (the reference makes a pass over all flows for each). The subtractions from each
        link's remaining capacity happen in the reference's order, so every float is the same."""
        links = self._links
        count = len(links)
        remaining = [0.0] * count
        unfixed = [0] * count
        low = [0.0] * count
        heap: list[tuple[float, int]] = []
        for i in self._busy:
            link = links[i]
            n = len(link.flows)
            remaining[i] = cap = link.capacity
            unfixed[i] = n
            low[i] = share = cap / n
            heap.append((share, i))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        finish: list[tuple[float, int, Flow]] = []
        add = finish.append
        inf = float("inf")
        fix: list[Flow] = []
        """The flows to fix at this share: one of the link's and the relays it feeds, depth
        first (a relay fixed earlier at its own bottleneck is skipped when popped)."""
        fix_pop = fix.pop
        while heap:
            key, i = pop(heap)
            n = unfixed[i]
            if n == 0 or key != low[i]:
                continue  # done, or not the link's lowest entry
            rem = remaining[i]
            share = (rem if rem > 0.0 else 0.0) / n
            if key != share:
                low[i] = share
                push(heap, (share, i))
                continue
            unfixed[i] = 0
            for flow in links[i].flows:
                if flow.epoch == epoch:
                    continue
                fix.append(flow)
                while fix:
                    f = fix_pop()
                    if f.epoch == epoch:
                        continue
                    f.epoch = epoch
                    if f.rate != share:
                        # its bytes up to now at the old rate, as the reference's (one step,
                        # or ``sync``'s replay if the rate held over earlier reallocations)
                        size = f.size
                        if f.synced == epoch - 1:
                            done = f.done + f.rate * (now - f.since)
                            if done > size:
                                done = size
                            f.done = done
                            f.since = now
                            f.synced = epoch
                        else:
                            self.sync(f)
                            done = f.done
                        f.rate = share
                        left = size - done
                        if left <= _EPS_BYTES:
                            f.finish_at = now
                            f.entry = entry = (now, f.id, f)
                            add(entry)
                        elif share > 0:
                            f.finish_at = at = now + left / share
                            f.entry = entry = (at, f.id, f)
                            add(entry)
                        else:
                            f.finish_at = inf
                            f.entry = None
                    for j in f.links:
                        if j != i:
                            rem = remaining[j] - share
                            remaining[j] = rem
                            n = unfixed[j] - 1
                            unfixed[j] = n
                            if n:
                                s = (rem if rem > 0.0 else 0.0) / n
                                if s < low[j]:
                                    low[j] = s
                                    push(heap, (s, j))
                    if f.followers:
                        fix += f.followers
        heapq.heapify(finish)
        return finish
