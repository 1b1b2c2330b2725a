"""The sans-I/O gossip engine: SWIM + Lifeguard membership, piggybacked catalog, Vivaldi RTTs.

``GossipCore`` is the one object a driver (asyncio UDP/TCP) or the simulation talks to, in the
aioquic style: feed it with ``receive_datagram(data, addr, now)`` and ``handle_timer(now)``;
drain it with ``datagrams_to_send(now)``, ``push_pulls_to_start(now)``, ``get_timer()`` and
``next_event()``. It never reads a clock, never sleeps, never touches a socket; all randomness comes
from the seeded ``random.Random`` it is given. Push-pull anti-entropy is a stream exchange of up to
three msgpack-able messages: the initiator sends ``push_pull_request``, then each side feeds what it
reads to ``handle_push_pull`` and sends back what it returns, until it returns None.

Member state transitions (incarnation rules, refutation) live in ``swim.py``; this module owns
probing, timers, packet assembly, push-pull and the catalog wiring. Must not import asyncio,
sockets, time or other p2preg modules outside ``p2preg.gossip`` (and the pure ``p2preg.oci``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2preg.gossip import messages as msgs
from p2preg.gossip.awareness import Awareness
from p2preg.gossip.broadcast import BroadcastQueue
from p2preg.gossip.catalog import Catalog, Change
from p2preg.gossip.config import Addr, GossipConfig
from p2preg.gossip.events import CatalogChanged, Event
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.swim import MemberState, MemberTable
from p2preg.gossip.vivaldi import Coordinate, VivaldiClient, VivaldiConfig
from p2preg.gossip.wire import (
    PART_OVERHEAD,
    DropCounters,
    DropReason,
    Keyring,
    MessageType,
    StreamDecoder,
    assemble_packet,
    decode_packet,
    encode_stream_frame,
    packet_overhead,
)

MAX_ALIVE_BYTES = 600
"""Our own alive message must leave room for piggybacked updates in a 1,400-byte packet."""


@dataclass(frozen=True, slots=True)
class PushPullStart:
    """The driver should open a TCP stream to ``addr`` and run a push-pull with ``request``.

    ``node`` is the peer's name, or None for a join seed whose name is not known yet.
    """

    addr: Addr
    node: str | None
    request: list[Any]


class GossipStats:
    """Counters the driver exports as metrics (and the simulation sums up)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "failed_probes",
        "indirect_probes",
        "packets_received",
        "packets_sent",
        "probes",
        "push_pulls",
    )

    def __init__(self) -> None:
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.probes = 0
        self.indirect_probes = 0
        self.failed_probes = 0
        """Probes that got no ack, directly or through a helper (the target is then suspected)."""
        self.push_pulls = 0


class _Probe:
    __slots__ = (
        "acked",
        "end_at",
        "expected_nacks",
        "indirect_at",
        "indirect_sent",
        "nacks",
        "seq",
        "started",
        "target",
    )

    def __init__(self, seq: int, target: str, started: float, indirect_at: float, end_at: float):
        self.seq = seq
        self.target = target
        self.started = started
        self.indirect_at = indirect_at
        self.end_at = end_at
        self.acked = False
        self.indirect_sent = False
        self.expected_nacks = 0
        self.nacks = 0


class _Relay:
    __slots__ = ("deadline", "origin", "origin_seq", "want_nack")

    def __init__(self, origin: Addr, origin_seq: int, deadline: float, want_nack: bool) -> None:
        self.origin = origin
        self.origin_seq = origin_seq
        self.deadline = deadline
        self.want_nack = want_nack


def push_pull_scale(interval_s: float, num_nodes: int) -> float:
    """memberlist's pushPullScale: the period grows with ``log2(n/32)`` above 32 nodes."""
    if num_nodes <= 32:
        return interval_s
    return interval_s * (math.ceil(math.log2(num_nodes) - math.log2(32)) + 1)


class GossipCore:
    """One node's gossip protocol state. Not thread-safe; one driver calls it at a time."""

    def __init__(
        self,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        keyring: Keyring | None = None,
        vivaldi: VivaldiConfig | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.keyring = keyring
        self.drops = DropCounters()
        self.stats = GossipStats()
        self._rng = rng
        self._events: deque[Event] = deque()
        self._queue = BroadcastQueue(config.retransmit_mult)
        self._awareness = Awareness(config.awareness_max_multiplier, enabled=config.lifeguard)
        self._vivaldi = VivaldiClient(vivaldi or VivaldiConfig(config.vivaldi_dimensionality), rng)
        self._coords: dict[str, Coordinate] = {}
        self.catalog = Catalog(
            config.name, config.generation, collect=config.tombstone_grace_s != math.inf
        )
        self.table = MemberTable(config, self._events, self._queue, self._awareness)
        self._overhead = packet_overhead(keyring)
        self._outbox: list[tuple[bytes, Addr]] = []
        self._pp_outbox: list[PushPullStart] = []
        self._seq = rng.randrange(1 << 31)
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._relays: dict[int, _Relay] = {}
        self._relay_heap: list[tuple[float, int]] = []
        self._catch_up_peer: str | None = None
        self._catch_ups_left = 0
        start = rng.random()
        self._next_probe_at = now + start * config.probe_interval_s
        self._next_gossip_at = now + start * config.gossip_interval_s
        self._next_push_pull_at = now + (0.5 + rng.random()) * config.push_pull_interval_s
        self._next_collect_at = now + config.tombstone_collect_interval_s
        if len(self.table.local_alive().encode()) > MAX_ALIVE_BYTES:
            raise ValueError(
                f"node identity (name, addresses, zone, meta) over {MAX_ALIVE_BYTES} B"
            )
        self.table.announce_self()

    # -- lifecycle --------------------------------------------------------------------------------

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        """Contact ``seeds`` with a push-pull each (queued for the driver); rejoin after a leave."""
        if self.table.leaving:
            self.table.rejoin(now)
        # Join catch-up: one more push-pull with a random member soon after joining repairs
        # whatever was broadcast before our seed itself knew it.
        # Two more follow at growing intervals: a peer picked for catch-up can itself be behind.
        catch_up = now + (2.0 + self._rng.random()) * self.config.probe_interval_s
        self._next_push_pull_at = min(self._next_push_pull_at, catch_up)
        self._catch_ups_left = 2
        for addr in seeds:
            if addr != self.config.gossip_addr:
                self._pp_outbox.append(
                    PushPullStart(addr, None, self.push_pull_request(now, join=True))
                )

    def leave(self, now: float) -> None:
        """Announce a graceful leave to a few members right away (and keep gossiping it)."""
        self.table.leave(now)
        self._probe = None
        for target in self.table.random_members(self._rng, self.config.gossip_nodes * 2, now):
            self._send(target.addr, [])

    @property
    def leaving(self) -> bool:
        return self.table.leaving

    # -- datagrams -----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """Process one UDP packet. Bad packets are counted in ``drops`` and change nothing."""
        self.stats.packets_received += 1
        self.stats.bytes_received += len(data)
        parts = decode_packet(data, self.keyring, self.drops, self.config.max_packet_bytes)
        if parts is None:
            return
        parsed: list[msgs.Message] = []
        for mtype, body in parts:
            message = msgs.parse(mtype, body)
            if message is None:
                self.drops.count(DropReason.MALFORMED)
                return
            parsed.append(message)
        for message in parsed:
            self._dispatch(message, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Every packet produced since the last call, as ``(payload, destination)``."""
        out, self._outbox = self._outbox, []
        return out

    def push_pulls_to_start(self, now: float) -> list[PushPullStart]:
        """Push-pull exchanges the driver should open over TCP (joins and periodic ones)."""
        out, self._pp_outbox = self._pp_outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def spread_push_pull_schedule(self, now: float) -> None:
        """Pick a uniformly random phase within the size-scaled push-pull period (a simulation
        that seeds a large cluster directly calls this, as a long-running cluster looks)."""
        period = push_pull_scale(self.config.push_pull_interval_s, self.table.num_live)
        self._next_push_pull_at = now + self._rng.random() * period

    def clear_events(self) -> None:
        """Discard queued events (a simulation that seeds state directly does not want them)."""
        self._events.clear()

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` has work to do."""
        # With nothing to piggyback, gossip ticks are no-ops: skip them entirely.
        t = self._next_gossip_at if self._queue else math.inf
        probe = self._probe
        if not self.table.leaving:
            t = min(t, self._next_push_pull_at)
            if probe is None:
                t = min(t, self._next_probe_at)
        if probe is not None:
            t = min(t, probe.end_at)
            if not probe.acked and not probe.indirect_sent:
                t = min(t, probe.indirect_at)
        if self._relay_heap:
            t = min(t, self._relay_heap[0][0])
        if self.config.tombstone_grace_s != math.inf:
            t = min(t, self._next_collect_at)
        nxt = self.table.next_deadline()
        if nxt is not None:
            t = min(t, nxt)
        return None if t == math.inf else t

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now``: probe phases, gossip, push-pull, expiries."""
        probe = self._probe
        if probe is not None:
            if not probe.acked and not probe.indirect_sent and now >= probe.indirect_at:
                self._send_indirect(probe, now)
            if now >= probe.end_at:
                self._finish_probe(probe, now)
        if not self.table.leaving:
            if self._probe is None and now >= self._next_probe_at:
                self._start_probe(now)
            if now >= self._next_push_pull_at:
                self._start_push_pull(now)
        if now >= self._next_gossip_at:
            self._gossip(now)
            interval = self.config.gossip_interval_s
            self._next_gossip_at += (
                math.floor((now - self._next_gossip_at) / interval) + 1
            ) * interval
        self._expire_relays(now)
        if now >= self._next_collect_at:
            self._collect_tombstones(now)
        for suspect in self.table.due_verifications(now):
            self._send_verification(suspect)
        self.table.expire(now)
        self._drain_forgotten(now)

    # -- catalog -------------------------------------------------------------------------------

    def advertise_have(self, digest: str) -> None:
        """This node now holds ``digest`` completely (verified, committed)."""
        self._advertise(digest, msgs.STATE_HAVE)

    def advertise_fetching(self, digest: str) -> None:
        """This node is downloading ``digest`` and can serve the bytes it already has."""
        self._advertise(digest, msgs.STATE_FETCHING)

    def advertise_drop(self, digest: str) -> None:
        """This node no longer holds ``digest`` (evicted, failed fetch)."""
        self._advertise(digest, msgs.STATE_DROPPED)

    def advertise_load(self, load: float) -> None:
        """Advertise the current load (e.g. active uploads); used to break holder ties."""
        self._advertise(msgs.LOAD_KEY, round(max(0.0, load), 2))

    def holders(self, digest: str) -> list[Member]:
        """Live peers that have ``digest``, nearest first (zone, RTT estimate, load)."""
        return self._ordered(self.catalog.nodes_with(digest, msgs.STATE_HAVE))

    def fetchers(self, digest: str) -> list[Member]:
        """Live peers that are fetching ``digest`` right now, nearest first."""
        return self._ordered(self.catalog.nodes_with(digest, msgs.STATE_FETCHING))

    # -- membership queries -----------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member this node knows, itself first, including suspect/dead/left ones."""
        out = [self.local_member()]
        out.extend(self._snapshot(m) for m in self.table.states())
        return out

    def member(self, name: str) -> Member | None:
        if name == self.name:
            return self.local_member()
        m = self.table.get(name)
        return None if m is None else self._snapshot(m)

    def local_member(self) -> Member:
        c = self.config
        return Member(
            name=c.name,
            gossip_addr=c.gossip_addr,
            http_addr=c.http_addr,
            zone=c.zone,
            incarnation=self.table.incarnation,
            status=MemberStatus.LEFT if self.table.leaving else MemberStatus.ALIVE,
            load=self.catalog.load_of(c.name),
            meta=dict(c.meta),
            rtt_estimate_s=0.0,
        )

    def num_live(self) -> int:
        """Alive or suspect members, this node included (the ``n`` of every formula)."""
        return self.table.num_live

    @property
    def coordinate(self) -> Coordinate:
        return self._vivaldi.coord

    @property
    def awareness_score(self) -> int:
        return self._awareness.score

    def coordinates(self) -> dict[str, Coordinate]:
        """This node's network coordinate and every member's it has learned (a read-only view
        for the status page's picture of the cluster)."""
        return {**self._coords, self.name: self._vivaldi.coord}

    def rtt_estimate_s(self, name: str) -> float | None:
        other = self._coords.get(name)
        return None if other is None else self._vivaldi.coord.distance_s(other)

    # -- push-pull (stream) --------------------------------------------------------------------

    def push_pull_request(self, now: float, *, join: bool = False) -> list[Any]:
        """The first message of an exchange we initiate: our membership and catalog versions."""
        self.stats.push_pulls += 1
        return [msgs.PP_REQUEST, join, self.table.rows(), self.catalog.versions()]

    def handle_push_pull(self, message: Any, now: float) -> list[Any] | None:
        """Consume one received stream message; the message to send back, or None to close.

        Invalid messages are counted (``drops``) and change nothing.
        """
        msg = msgs.parse_push_pull(message)
        if msg is None:
            self.drops.count(DropReason.MALFORMED)
            return None
        kind = msg[0]
        if kind == msgs.PP_REQUEST:
            self.table.merge_rows(msg[2], now)
            return [
                msgs.PP_REPLY,
                self.table.rows(),
                self.catalog.versions(),
                self.catalog.entries_newer_than(msg[3]),
            ]
        if kind == msgs.PP_REPLY:
            self.table.merge_rows(msg[1], now)
            self._apply_entries(msg[3])
            final = self.catalog.entries_newer_than(msg[2])
            return [msgs.PP_FINAL, final] if final else None
        self._apply_entries(msg[1])
        return None

    def encode_stream(self, message: list[Any]) -> bytes:
        """Frame a push-pull message for the TCP stream (length prefix, MAC)."""
        return encode_stream_frame(message, self.keyring)

    def stream_decoder(self) -> StreamDecoder:
        """A fresh decoder for one TCP stream; it counts drops into ``drops``."""
        return StreamDecoder(self.keyring, self.drops, self.config.max_stream_bytes)

    # -- internals: probing ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _next_probe_target(self) -> MemberState | None:
        order = self._probe_order
        for _ in range(2):
            while self._probe_index < len(order):
                name = order[self._probe_index]
                self._probe_index += 1
                m = self.table.get(name)
                if m is not None and m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT):
                    return m
            order = self.table.names()
            self._rng.shuffle(order)
            self._probe_order = order
            self._probe_index = 0
        return None

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        self._next_probe_at = now + cfg.probe_interval_s
        target = self._next_probe_target()
        if target is None:
            return
        if self._rng.random() < cfg.probe_interval_s / cfg.reconnect_interval_s:
            # Reconnect (as Serf does): try a failed member now and then, so that the two sides
            # of a healed partition find each other again.
            dead = self.table.random_dead(self._rng)
            if dead is not None:
                request = self.push_pull_request(now)
                self._pp_outbox.append(PushPullStart(dead.addr, dead.name, request))
        seq = self._next_seq()
        interval = self._awareness.scale_timeout(cfg.probe_interval_s)
        self._probe = _Probe(seq, target.name, now, now + cfg.probe_timeout_s, now + interval)
        self.stats.probes += 1
        parts = [(MessageType.PING, msgs.Ping(seq, target.name, self.name).encode())]
        if cfg.lifeguard and target.status == MemberStatus.SUSPECT:
            # Buddy system: tell a suspect directly so it can refute at once. The suspicion goes
            # first: the target handles it before the PING, so its ACK already piggybacks the
            # refutation (or, if we are the one who missed it, its re-announced alive).
            suspect = msgs.Suspect(target.incarnation, target.name, self.name)
            parts.insert(0, (MessageType.SUSPECT, suspect.encode()))
        self._send(target.addr, parts)

    def _send_indirect(self, probe: _Probe, now: float) -> None:
        probe.indirect_sent = True
        target = self.table.get(probe.target)
        if target is None:
            return
        helpers = self.table.random_members(
            self._rng, self.config.indirect_checks, now, exclude=probe.target, alive_only=True
        )
        want_nack = self.config.lifeguard
        body = msgs.IndirectPing(
            probe.seq, target.name, target.addr[0], target.addr[1], want_nack
        ).encode()
        for helper in helpers:
            self.stats.indirect_probes += 1
            self._send(helper.addr, [(MessageType.INDIRECT_PING, body)])
        probe.expected_nacks = len(helpers) if want_nack else 0

    def _send_verification(self, target: MemberState) -> None:
        """Ask a member we still suspect directly (Lifeguard). Only the suspicion and a PING, in
        that order: a live member handles the suspicion first (refutes, or re-announces if we
        are the one who missed its refutation), so the ACK piggybacks its current alive claim.
        The ACK matches no probe and is otherwise ignored; silence proves nothing here."""
        suspect = msgs.Suspect(target.incarnation, target.name, self.name)
        ping = msgs.Ping(self._next_seq(), target.name, self.name)
        parts = [(MessageType.SUSPECT, suspect.encode()), (MessageType.PING, ping.encode())]
        self._send(target.addr, parts, piggyback=False)

    def _finish_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self._next_probe_at = max(self._next_probe_at, now)
        if probe.acked:
            return
        self.stats.failed_probes += 1
        if probe.expected_nacks > 0:
            missed = probe.expected_nacks - probe.nacks
            if missed > 0:
                self._awareness.apply_delta(missed)
        else:
            self._awareness.apply_delta(1)
        self.table.suspect_by_probe(probe.target, now)

    def _expire_relays(self, now: float) -> None:
        heap = self._relay_heap
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            relay = self._relays.pop(seq, None)
            if relay is not None and relay.want_nack:
                self._send(relay.origin, [(MessageType.NACK, msgs.Nack(relay.origin_seq).encode())])

    # -- internals: dispatch ---------------------------------------------------------------

    def _dispatch(self, m: msgs.Message, addr: Addr, now: float) -> None:
        if isinstance(m, msgs.Ping):
            if m.target == self.name:
                ack = msgs.Ack(m.seq, self._vivaldi.coord.to_wire())
                self._send(addr, [(MessageType.ACK, ack.encode())])
        elif isinstance(m, msgs.Ack):
            self._on_ack(m, now)
        elif isinstance(m, msgs.Alive):
            self.table.on_alive(m, now)
        elif isinstance(m, msgs.Suspect):
            self.table.on_suspect(m, now)
        elif isinstance(m, msgs.Dead):
            self.table.on_dead(m, now)
            self._drain_forgotten(now)
        elif isinstance(m, msgs.CatalogDelta):
            self._on_catalog(m)
        elif isinstance(m, msgs.IndirectPing):
            self._on_indirect_ping(m, addr, now)
        elif isinstance(m, msgs.Nack):
            probe = self._probe
            if probe is not None and probe.seq == m.seq:
                probe.nacks += 1

    def _on_ack(self, m: msgs.Ack, now: float) -> None:
        relay = self._relays.pop(m.seq, None)
        if relay is not None:
            ack = msgs.Ack(relay.origin_seq, None)
            self._send(relay.origin, [(MessageType.ACK, ack.encode())])
            return
        probe = self._probe
        if probe is None or probe.seq != m.seq or probe.acked:
            return
        probe.acked = True
        self._awareness.apply_delta(-1)
        if m.coord is not None:
            other = Coordinate.from_wire(m.coord, self._vivaldi.config)
            if other is not None and self._vivaldi.update(probe.target, other, now - probe.started):
                self._coords[probe.target] = other

    def _on_indirect_ping(self, m: msgs.IndirectPing, addr: Addr, now: float) -> None:
        if len(self._relays) >= 1024:
            return
        seq = self._next_seq()
        deadline = now + self.config.probe_timeout_s
        self._relays[seq] = _Relay(addr, m.seq, deadline, m.want_nack)
        heapq.heappush(self._relay_heap, (deadline, seq))
        ping = msgs.Ping(seq, m.target, self.name)
        self._send((m.host, m.port), [(MessageType.PING, ping.encode())])

    def _on_catalog(self, delta: msgs.CatalogDelta) -> None:
        m = self.table.get(delta.node)
        if m is not None and m.status in (MemberStatus.DEAD, MemberStatus.LEFT):
            return
        if self.catalog.apply(delta):
            self._queue.queue(("c", delta.node, delta.key), MessageType.CATALOG, delta.encode())
            if self.config.emit_catalog_events and delta.key != msgs.LOAD_KEY:
                self._events.append(
                    CatalogChanged(delta.node, delta.key, msgs.STATE_NAMES.get(int(delta.value)))
                )

    def _apply_entries(self, blocks: list[Any]) -> None:
        accept = {
            b[0]
            for b in blocks
            if (m := self.table.get(b[0])) is None
            or m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        }
        changes: list[Change] = self.catalog.apply_entries(blocks, accept)
        if self.config.emit_catalog_events:
            for node, key, value in changes:
                if key != msgs.LOAD_KEY:
                    self._events.append(CatalogChanged(node, key, msgs.STATE_NAMES.get(int(value))))

    def _advertise(self, key: str, value: float) -> None:
        delta = self.catalog.set_local(key, value)
        if delta is not None:
            self._queue.queue(("c", self.name, key), MessageType.CATALOG, delta.encode())

    def _collect_tombstones(self, now: float) -> None:
        """One bounded collection pass (catalog.py explains why a floor makes this safe)."""
        cfg = self.config
        if cfg.tombstone_grace_s == math.inf:
            self._next_collect_at = math.inf
            return
        backlog = self.catalog.collect_tombstones(
            now, cfg.tombstone_grace_s, cfg.tombstone_collect_batch
        )
        wait = cfg.probe_interval_s if backlog else cfg.tombstone_collect_interval_s
        self._next_collect_at = now + wait

    def _drain_forgotten(self, now: float) -> None:
        if self.table.revived:
            # Members came back (a healed partition, a refuted false death): run anti-entropy
            # with one of them soon, so catalog changes made while apart flow both ways.
            self._catch_up_peer = self._rng.choice(self.table.revived)
            self.table.revived = []
            soon = now + (1.0 + self._rng.random()) * self.config.probe_interval_s
            self._next_push_pull_at = min(self._next_push_pull_at, soon)
        for name in self.table.take_forgotten():
            self.catalog.forget(name)
            self._coords.pop(name, None)
            self._vivaldi.forget(name)

    # -- internals: sending ----------------------------------------------------------------

    def _send(
        self, addr: Addr, parts: Sequence[tuple[int, bytes]], *, piggyback: bool = True
    ) -> None:
        budget = self.config.max_packet_bytes - self._overhead
        for _, body in parts:
            budget -= len(body) + PART_OVERHEAD
        out = list(parts)
        if piggyback:
            out.extend(self._queue.get(budget, PART_OVERHEAD, self.table.num_live))
        if not out:
            return
        packet = assemble_packet(out, self.keyring)
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(packet)
        self._outbox.append((packet, addr))

    def _gossip(self, now: float) -> None:
        if not self._queue:
            return
        for target in self.table.random_members(
            self._rng, self.config.gossip_nodes, now, gossip_targets=True
        ):
            if not self._queue:
                return
            self._send(target.addr, [])

    def _start_push_pull(self, now: float) -> None:
        n = self.table.num_live
        self._next_push_pull_at = now + push_pull_scale(self.config.push_pull_interval_s, n)
        if self._catch_ups_left > 0:
            wait = (3.0 ** (3 - self._catch_ups_left) + self._rng.random()) * 2.0
            self._catch_ups_left -= 1
            soon = now + wait * self.config.probe_interval_s
            self._next_push_pull_at = min(self._next_push_pull_at, soon)
        peers = self.table.random_members(self._rng, 1, now, alive_only=True)
        if self._catch_up_peer is not None:
            peer_state = self.table.get(self._catch_up_peer)
            self._catch_up_peer = None
            if peer_state is not None and peer_state.status == MemberStatus.ALIVE:
                peers = [peer_state]
        if peers:
            peer = peers[0]
            self._pp_outbox.append(PushPullStart(peer.addr, peer.name, self.push_pull_request(now)))

    # -- internals: snapshots ----------------------------------------------------------------

    def _snapshot(self, m: MemberState) -> Member:
        return Member(
            name=m.name,
            gossip_addr=m.addr,
            http_addr=m.http,
            zone=m.zone,
            incarnation=m.incarnation,
            status=m.status,
            load=self.catalog.load_of(m.name),
            meta=dict(m.meta),
            rtt_estimate_s=self.rtt_estimate_s(m.name),
        )

    def _ordered(self, names: set[str]) -> list[Member]:
        zone = self.config.zone
        ranked: list[tuple[tuple[int, int, float, float, str], MemberState]] = []
        for name in names:
            m = self.table.get(name)
            if m is None or m.status not in (MemberStatus.ALIVE, MemberStatus.SUSPECT):
                continue
            rtt = self.rtt_estimate_s(name)
            key = (
                0 if m.status == MemberStatus.ALIVE else 1,
                0 if (zone and m.zone == zone) else 1,
                math.inf if rtt is None else rtt,
                self.catalog.load_of(name),
                name,
            )
            ranked.append((key, m))
        ranked.sort(key=lambda item: item[0])
        return [self._snapshot(m) for _, m in ranked]
