"""A deterministic in-memory network that runs many ``GossipCore`` nodes in one thread.

Event-driven: one heap of datagram deliveries, push-pull stream legs and node timers, ordered by
simulated time (a float; no clock is read). The network has per-pair latency (nodes sit on a plane,
zones are clusters on it, so Vivaldi has something to learn), independent random loss per datagram,
and partitions (groups that cannot reach each other, for UDP and TCP alike). Every random choice
comes from ``random.Random(seed)``: the same seed gives the same run. Tests and
``benchmarks/gossip_sim.py`` both use it. Owns: ``Simulation``, ``SimNode``, ``DeathRecord``.
Must not import asyncio, sockets or time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from p2preg.gossip.config import Addr, GossipConfig
from p2preg.gossip.core import GossipCore
from p2preg.gossip.events import LocalRefuted, MemberDead, MemberSuspect
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.messages import PP_REQUEST
from p2preg.gossip.wire import Keyring

_TIMER, _DGRAM, _STREAM = 0, 1, 2


@dataclass(frozen=True, slots=True)
class DeathRecord:
    """``observer`` declared ``subject`` dead at ``time`` (MemberDead event)."""

    time: float
    observer: str
    subject: str


@dataclass(slots=True)
class SimNode:
    name: str
    addr: Addr
    zone: str
    pos: tuple[float, float]
    core: GossipCore
    up: bool = True
    life: int = 0
    udp_bytes_sent: int = 0
    tcp_bytes_sent: int = 0
    push_pulls_received: int = 0
    """Push-pull requests this node answered (the inbound load a herd would put on it)."""


@dataclass(slots=True)
class SimCounters:
    datagrams_sent: int = 0
    datagrams_lost: int = 0
    datagrams_blocked: int = 0
    push_pulls: int = 0
    suspicions: int = 0
    refutations: int = 0
    timer_wakeups: int = 0
    """Node timers that fired (``handle_timer`` calls): idle wake-ups show up here."""
    deaths: list[DeathRecord] = field(default_factory=list)


class Simulation:
    """Many gossip cores over a lossy, partitionable in-memory network with a fake clock."""

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        base_latency_s: float = 0.0005,
        latency_per_unit_s: float = 0.0001,
        jitter_s: float = 0.0002,
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.loss = loss
        self.base_latency_s = base_latency_s
        self.latency_per_unit_s = latency_per_unit_s
        self.jitter_s = jitter_s
        self.template = config or GossipConfig(name="template", gossip_addr=("0.0.0.0", 0))
        self.keyring = keyring
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.counters = SimCounters()
        self._by_addr: dict[Addr, str] = {}
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._timer_at: dict[str, float] = {}
        self._group: dict[str, int] = {}
        self._zone_centers: dict[str, tuple[float, float]] = {}
        self._lag: dict[str, float] = {}
        self._cut: set[frozenset[str]] = set()
        self.on_event: Callable[[str, object], None] | None = None

    # -- topology --------------------------------------------------------------------------------

    def add_node(
        self, name: str, *, zone: str = "", join: Iterable[str] = (), **overrides: Any
    ) -> GossipCore:
        """Start a node now (optionally joining the named nodes) and return its core."""
        index = len(self._by_addr)
        addr = (f"10.{index // 65536}.{index // 256 % 256}.{index % 256}", 7946)
        center = self._zone_centers.setdefault(
            zone, (self.rng.uniform(0, 200), self.rng.uniform(0, 200)) if zone else (100.0, 100.0)
        )
        pos = (center[0] + self.rng.gauss(0, 10), center[1] + self.rng.gauss(0, 10))
        node = SimNode(name, addr, zone, pos, self._make_core(name, addr, zone, 0, overrides))
        self.nodes[name] = node
        self._by_addr[addr] = name
        self._after(node)
        if join:
            self.join(name, join)
        return node.core

    def add_converged_cluster(
        self, count: int, *, prefix: str = "n", zones: tuple[str, ...] = (), **overrides: Any
    ) -> list[str]:
        """Start ``count`` nodes that already know each other (the state a finished join storm
        leaves), without simulating the storm: for tests of everything that happens after it."""
        names = [f"{prefix}{i}" for i in range(count)]
        for i, name in enumerate(names):
            zone = zones[i % len(zones)] if zones else ""
            self.add_node(name, zone=zone, **overrides)
        alives = [self.nodes[name].core.table.local_alive() for name in names]
        for name in names:
            node = self.nodes[name]
            for alive in alives:
                node.core.table.add_known(alive, self.now)
            node.core.spread_push_pull_schedule(self.now)
            self._after(node)
        return names

    def _make_core(
        self, name: str, addr: Addr, zone: str, generation: int, overrides: dict[str, Any]
    ) -> GossipCore:
        cfg = replace(
            self.template,
            name=name,
            gossip_addr=addr,
            http_addr=f"{addr[0]}:5000",
            zone=zone,
            generation=generation,
            **overrides,
        )
        rng = random.Random(self.rng.getrandbits(64))
        return GossipCore(cfg, rng, self.now, self.keyring)

    def join(self, name: str, seeds: Iterable[str]) -> None:
        node = self.nodes[name]
        node.core.join([self.nodes[s].addr for s in seeds], self.now)
        self._after(node)

    def crash(self, name: str) -> None:
        """Stop a node silently (no leave): it neither sends nor receives any more."""
        node = self.nodes[name]
        node.up = False
        node.life += 1
        self._timer_at.pop(name, None)

    def restart(self, name: str, join: Iterable[str]) -> GossipCore:
        """Bring a crashed node back as a fresh process (empty state, newer generation)."""
        node = self.nodes[name]
        node.life += 1
        node.up = True
        node.core = self._make_core(name, node.addr, node.zone, node.life, {})
        self._after(node)
        self.join(name, join)
        return node.core

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        node.core.leave(self.now)
        self._after(node)

    def set_inbound_lag(self, name: str, lag_s: float) -> None:
        """Make ``name`` a degraded node: everything sent to it is processed ``lag_s`` late
        (a starved CPU or a backlogged event loop, the situation Lifeguard was built for)."""
        self._lag[name] = lag_s

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes in different groups cannot reach each other."""
        self._group = {name: i for i, group in enumerate(groups) for name in group}

    def cut(self, a: str, b: str) -> None:
        """Break the single link between ``a`` and ``b`` (both still reach everyone else)."""
        self._cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self._group = {}
        self._cut = set()

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up and not n.core.leaving]

    # -- running ----------------------------------------------------------------------------

    def run_until(
        self, t: float, *, until: Callable[[], bool] | None = None, check_every_s: float = 0.2
    ) -> bool:
        """Advance simulated time to ``t``; with ``until``, stop early once it holds (checked
        every ``check_every_s``). Returns whether ``until`` held (True without one)."""
        next_check = self.now
        heap = self._heap
        while heap and heap[0][0] <= t:
            if until is not None and heap[0][0] >= next_check:
                self.now = max(self.now, next_check)
                if until():
                    return True
                next_check = self.now + check_every_s
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            if kind == _TIMER:
                self._fire_timer(when, payload)
            elif kind == _DGRAM:
                self._deliver(*payload)
            else:
                self._deliver_stream(*payload)
        self.now = t
        return until() if until is not None else True

    def run_for(self, seconds: float, **kwargs: Any) -> bool:
        return self.run_until(self.now + seconds, **kwargs)

    # -- measurements ------------------------------------------------------------------------

    def udp_bytes_per_node_s(self, since_bytes: dict[str, int], seconds: float) -> float:
        live = self.live_nodes()
        total = sum(n.udp_bytes_sent - since_bytes.get(n.name, 0) for n in live)
        return total / max(1, len(live)) / seconds

    def byte_marks(self) -> dict[str, int]:
        return {name: n.udp_bytes_sent for name, n in self.nodes.items()}

    def all_converged(self) -> bool:
        """Every live node sees exactly the live nodes as alive/suspect (cheap count check)."""
        expected = len(self.live_nodes())
        return all(n.core.num_live() == expected for n in self.live_nodes())

    def membership_views(self) -> dict[str, dict[str, MemberStatus]]:
        return {n.name: {m.name: m.status for m in n.core.members()} for n in self.live_nodes()}

    def latency_s(self, a: SimNode, b: SimNode) -> float:
        dist = math.dist(a.pos, b.pos)
        return self.base_latency_s + dist * self.latency_per_unit_s

    # -- internals ---------------------------------------------------------------------------

    def _push(self, when: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, payload))

    def _blocked(self, a: str, b: str) -> bool:
        group = self._group
        if self._cut and frozenset((a, b)) in self._cut:
            return True
        return bool(group) and group.get(a, -1) != group.get(b, -1)

    def _after(self, node: SimNode) -> None:
        """Collect what ``node`` produced and re-arm its timer."""
        if not node.up:
            return
        core = node.core
        now = self.now
        counters = self.counters
        rng = self.rng
        for data, addr in core.datagrams_to_send(now):
            node.udp_bytes_sent += len(data)
            counters.datagrams_sent += 1
            dst = self._by_addr.get(addr)
            if dst is None:
                continue
            if self._blocked(node.name, dst):
                counters.datagrams_blocked += 1
                continue
            if self.loss and rng.random() < self.loss:
                counters.datagrams_lost += 1
                continue
            delay = self.latency_s(node, self.nodes[dst]) + rng.random() * self.jitter_s
            if self._lag:
                delay += self._lag.get(dst, 0.0)
            self._push(now + delay, _DGRAM, (dst, data, node.addr))
        for start in core.push_pulls_to_start(now):
            dst = self._by_addr.get(start.addr)
            if dst is not None:
                counters.push_pulls += 1
                self._send_stream(node, dst, start.request)
        while (event := core.next_event()) is not None:
            if isinstance(event, MemberDead):
                counters.deaths.append(DeathRecord(now, node.name, event.name))
            elif isinstance(event, MemberSuspect):
                counters.suspicions += 1
            elif isinstance(event, LocalRefuted):
                counters.refutations += 1
            if self.on_event is not None:
                self.on_event(node.name, event)
        t = core.get_timer()
        if t is not None:
            t = max(t, now)
            if t < self._timer_at.get(node.name, math.inf):
                self._timer_at[node.name] = t
                self._push(t, _TIMER, (node.name, node.life))

    def _fire_timer(self, when: float, payload: tuple[str, int]) -> None:
        name, life = payload
        node = self.nodes[name]
        if not node.up or node.life != life or self._timer_at.get(name) != when:
            return
        del self._timer_at[name]
        self.counters.timer_wakeups += 1
        node.core.handle_timer(when)
        self._after(node)

    def _deliver(self, dst: str, data: bytes, src: Addr) -> None:
        node = self.nodes[dst]
        if not node.up:
            return
        node.core.receive_datagram(data, src, self.now)
        self._after(node)

    def _send_stream(self, node: SimNode, dst: str, message: list[Any]) -> None:
        if self._blocked(node.name, dst) or not self.nodes[dst].up:
            return
        frame = node.core.encode_stream(message)
        node.tcp_bytes_sent += len(frame)
        delay = 2 * self.latency_s(node, self.nodes[dst])
        self._push(self.now + delay, _STREAM, (dst, node.name, frame))

    def _deliver_stream(self, dst: str, src: str, frame: bytes) -> None:
        node = self.nodes[dst]
        if not node.up or self._blocked(src, dst):
            return
        for message in node.core.stream_decoder().feed(frame):
            if isinstance(message, list) and message and message[0] == PP_REQUEST:
                node.push_pulls_received += 1
            reply = node.core.handle_push_pull(message, self.now)
            if reply is not None:
                self._send_stream(node, src, reply)
        self._after(node)
