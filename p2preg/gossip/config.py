"""Tunables of the gossip core: one frozen dataclass, every default documented in docs/gossip.md.

Owns: ``GossipConfig``, the ``Addr`` alias and ``format_host_port``. Must not import asyncio,
sockets or any other p2preg module; the driver builds one of these from ``p2preg.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Addr = tuple[str, int]
"""A gossip (UDP/TCP) address: host and port. The core never resolves or connects it."""


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Identity of the local node plus every protocol tunable (defaults follow memberlist LAN)."""

    name: str
    """Unique node name in the cluster."""
    gossip_addr: Addr
    """Where peers send UDP packets and open push-pull TCP streams to this node."""
    http_addr: str = ""
    """``host:port`` that peers use for blob fetches (``--advertise``)."""
    zone: str = ""
    """Topology label (``--zone``); holders in the same zone are preferred."""
    meta: dict[str, str] = field(default_factory=dict)
    """Small free-form labels carried in the alive message (keep under ~200 bytes)."""
    generation: int = 0
    """Boot generation of the catalog (the driver passes boot time in ms). A restarted node's
    catalog with a higher generation replaces the old one everywhere."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    gossip_to_dead_s: float = 30.0
    push_pull_interval_s: float = 30.0
    """Base anti-entropy period; scaled up with cluster size like memberlist's pushPullScale."""
    reconnect_interval_s: float = 30.0
    """Average period of reconnect push-pulls to a random failed member (Serf's reconnect)."""
    dead_reclaim_s: float = 3600.0
    """How long a dead or left member is remembered (reported, and retried with a reconnect
    push-pull each period so a healed partition re-merges) before it is forgotten."""
    tombstone_grace_s: float = 3600.0
    """How long a catalog tombstone (a ``drop``) is kept, on its owner and on every replica,
    before it is collected. Far above the time a delta or a push-pull takes to reach everyone;
    a replica behind by more than this gets a full resync of that node's entries instead of the
    tombstones (correct either way, only costlier). ``math.inf`` keeps tombstones forever."""
    tombstone_collect_interval_s: float = 60.0
    """Period of the collection pass (tombstones are collected between grace and grace plus two
    periods after they were stored)."""
    tombstone_collect_batch: int = 4096
    """At most this many tombstones examined per pass; a backlog continues one probe interval
    later, so collection never stalls the core."""
    name_conflict_refute_interval_s: float = 60.0
    """A claim of this node's name from another address is refuted at most once per this
    period (see ``swim.MemberTable.on_alive``): two nodes with one name do not fight an
    incarnation war, and an old instance's address left in the cluster is still replaced."""
    awareness_max_multiplier: int = 8
    lifeguard: bool = True
    """Lifeguard refinements: local health awareness (nacks, stretched timeouts), dynamic
    suspicion timeouts and the buddy system. ``False`` gives classic SWIM with suspicion."""
    max_packet_bytes: int = 1400
    """Hard cap for one UDP packet, MAC included."""
    max_stream_bytes: int = 16 * 1024 * 1024
    """Hard cap for one push-pull stream frame."""
    vivaldi_dimensionality: int = 8
    emit_catalog_events: bool = True
    """Queue a ``CatalogChanged`` event for every remote catalog change (simulations: off)."""
