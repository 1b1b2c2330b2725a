"""The gossip layer as one service a node starts and stops; plus a standalone runner.

Owns ``GossipServiceConfig`` (the gossip flags of ``p2preg serve`` plus protocol intervals),
``GossipService`` (config -> keyring, core, driver, discovery; the API node.py calls) and
``main``: ``python -m p2preg.gossip.service --gossip-listen 127.0.0.1:0 --http-listen 127.0.0.1:0
--join ...`` runs gossip plus ``GET /p2p/v1/members`` and prints its bound ports as one JSON line
on stdout (used by the real-socket tests; ``p2preg serve`` takes the same gossip flags).

Use from node.py::

    gossip = GossipService(GossipServiceConfig.from_node_config(config, http_addr))
    await gossip.start()                      # raises GossipConfigError (a ConfigError)
    app.add_routes(members_routes(gossip))    # p2preg.gossip.http
    ...  gossip.holders(digest), gossip.advertise_have(digest) ...
    gossip.advertise_have_many(committed_digests)   # at start-up: one flush for all of them
    metrics.set_gossip_reading(gossip.stats)        # p2preg.registry.metrics, read at scrape
    await gossip.stop()

Every flag error raises ``GossipConfigError`` (a ``p2preg.config.ConfigError``) naming the flag.
Must not import the registry, storage or fetch packages; aiohttp only in the runner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from p2preg.clock import Clock, MonotonicClock
from p2preg.config import ConfigError
from p2preg.gossip.config import Addr, GossipConfig, format_host_port
from p2preg.gossip.core import GossipCore
from p2preg.gossip.discovery import (
    DiscoveryConfigError,
    DnsSeeds,
    MdnsAnnouncement,
    MdnsDiscovery,
    Resolver,
    SeedAddress,
    SeedPoller,
    SeedSource,
    StaticSeeds,
    parse_host_port,
    system_resolver,
)
from p2preg.gossip.driver import EventCallback, GossipDriver
from p2preg.gossip.events import (
    CatalogChanged,
    Event,
    LocalRefuted,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    NameConflict,
)
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.vivaldi import Coordinate
from p2preg.gossip.wire import Keyring, KeyringError

log = logging.getLogger(__name__)

DEFAULT_GOSSIP_PORT = 7946


class GossipConfigError(ConfigError):
    """A gossip flag cannot work; the message names the flag."""


class NodeConfigLike(Protocol):
    """The fields of ``p2preg.config.Config`` this module reads (kept narrow on purpose)."""

    @property
    def gossip_listen(self) -> str | None: ...
    @property
    def join(self) -> tuple[str, ...]: ...
    @property
    def join_dns(self) -> str | None: ...
    @property
    def mdns(self) -> bool: ...
    @property
    def mdns_interface(self) -> tuple[str, ...]: ...
    @property
    def cluster_key_file(self) -> str | None: ...
    @property
    def node_name(self) -> str | None: ...
    @property
    def tombstone_grace_s(self) -> float: ...
    @property
    def zone(self) -> str | None: ...
    @property
    def advertise(self) -> str | None: ...


@dataclass(frozen=True)
class GossipServiceConfig:
    """Everything the gossip layer of one node needs. Flag names: ``--gossip-listen`` etc."""

    gossip_listen: str = f"0.0.0.0:{DEFAULT_GOSSIP_PORT}"
    join: tuple[str, ...] = ()
    join_dns: tuple[str, ...] = ()
    mdns: bool = False
    mdns_interfaces: tuple[str, ...] = ()
    cluster_key_file: str | None = None
    node_name: str = ""
    """Unique in the cluster; empty means the host name."""
    zone: str = ""
    advertise: str = ""
    """HTTP ``host:port`` peers fetch blobs from (``--advertise``)."""
    gossip_advertise: str = ""
    """Gossip ``host:port`` peers send to; default: the listen address, or with a wildcard listen
    the ``--advertise`` host (or the first ``--mdns-interface``) with the bound gossip port."""
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    gossip_interval_s: float = 0.2
    push_pull_interval_s: float = 30.0
    suspicion_mult: int = 4
    dead_reclaim_s: float = 60.0
    tombstone_grace_s: float = 3600.0
    """How long catalog tombstones (dropped digests) are kept before collection (docs/gossip.md)."""
    seed_interval_s: float = 30.0
    """How often discovery sources are polled (DNS re-resolved) for peers not yet known."""
    stream_timeout_s: float = 10.0
    leave_timeout_s: float = 1.0
    random_seed: int | None = None
    """Seed for the core's random choices; None draws one from the OS."""

    @classmethod
    def from_node_config(cls, config: NodeConfigLike, http_addr: str = "") -> GossipServiceConfig:
        """Map ``p2preg.config.Config`` onto this; ``http_addr`` is the bound ``--listen``."""
        return cls(
            gossip_listen=config.gossip_listen or f"0.0.0.0:{DEFAULT_GOSSIP_PORT}",
            join=tuple(config.join),
            join_dns=(config.join_dns,) if config.join_dns else (),
            mdns=config.mdns,
            mdns_interfaces=tuple(config.mdns_interface),
            cluster_key_file=config.cluster_key_file,
            node_name=config.node_name or "",
            zone=config.zone or "",
            advertise=config.advertise or http_addr,
            tombstone_grace_s=config.tombstone_grace_s,
        )


def load_keyring(path: str | None) -> Keyring | None:
    """Read ``--cluster-key-file`` (hex keys, one per line, the first signs)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise GossipConfigError(f"--cluster-key-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise GossipConfigError(f"--cluster-key-file {path}: not a text file") from None
    try:
        return Keyring.from_text(text)
    except KeyringError as exc:
        raise GossipConfigError(f"--cluster-key-file {path}: {exc}") from None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _ip_or_error(host: str, flag: str, value: str) -> str:
    if not _is_ip(host) or _is_wildcard(host):
        raise GossipConfigError(
            f"{flag} {value}: gossip needs this node's IP address here, not {host!r}"
        )
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _gossip_advertise_host(cfg: GossipServiceConfig, listen_host: str) -> str:
    """The IP peers send gossip to (see ``GossipServiceConfig.gossip_advertise``)."""
    if cfg.gossip_advertise:
        return _ip_or_error(cfg.gossip_advertise, "--gossip-advertise", cfg.gossip_advertise)
    if not _is_wildcard(listen_host):
        return _ip_or_error(listen_host, "--gossip-listen", cfg.gossip_listen)
    if cfg.advertise:
        try:
            host = parse_host_port(cfg.advertise, flag="--advertise").host
        except DiscoveryConfigError as exc:
            raise GossipConfigError(str(exc)) from None
        return _ip_or_error(host, "--advertise", cfg.advertise)
    if cfg.mdns_interfaces:
        return cfg.mdns_interfaces[0]
    raise GossipConfigError(
        f"--gossip-listen {cfg.gossip_listen}: a wildcard address needs --advertise IP:PORT "
        "so peers know which address reaches this node"
    )


def _log_event(event: Event) -> None:
    if isinstance(event, CatalogChanged):
        log.debug("catalog: %s %s %s", event.node, event.state or "dropped", event.digest)
    elif isinstance(event, MemberJoined):
        m = event.member
        log.info(
            "member %s joined (%s, http %s)", m.name, format_host_port(*m.gossip_addr), m.http_addr
        )
    elif isinstance(event, MemberSuspect):
        log.info("member %s is suspect (accused by %s)", event.name, event.accuser)
    elif isinstance(event, MemberDead):
        log.info("member %s is dead (declared by %s)", event.name, event.accuser)
    elif isinstance(event, MemberLeft):
        log.info("member %s left", event.name)
    elif isinstance(event, MemberAlive):
        log.info("member %s refuted suspicion (incarnation %d)", event.name, event.incarnation)
    elif isinstance(event, LocalRefuted):
        log.warning("this node was suspected; refuted with incarnation %d", event.incarnation)
    elif isinstance(event, NameConflict):
        log.error(
            "node name %r is used by two live nodes: this one (gossip %s) and the one at %s "
            "(incarnation %d); they cannot both be members. Give each a unique --node-name, or "
            "leave --node-name unset (the default, host name plus an id kept in the data dir, "
            "is unique)", event.name, event.ours, event.theirs, event.incarnation)


class GossipService:
    """One node's gossip layer: membership, catalog, discovery, on real sockets."""

    def __init__(
        self,
        config: GossipServiceConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        # random.Random(None) seeds itself from the OS.
        self._rng = rng or random.Random(config.random_seed)
        self._resolver = resolver
        self._driver = GossipDriver(
            clock=self.clock,
            stream_timeout_s=config.stream_timeout_s,
            leave_timeout_s=config.leave_timeout_s,
        )
        self._mdns: MdnsDiscovery | None = None
        self._poller: SeedPoller | None = None
        self._started = False
        self.node_name = config.node_name or socket.gethostname().split(".")[0]
        self.seeds_joined = 0
        self._event_counts: dict[type[Event], int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def _sources(self, listen_port: int) -> list[SeedSource]:
        cfg = self.config
        sources: list[SeedSource] = []
        if cfg.join:
            sources.append(StaticSeeds(cfg.join, resolver=self._resolver))
        for name in cfg.join_dns:
            sources.append(DnsSeeds(name, default_port=listen_port, resolver=self._resolver))
        return sources

    def _core_config(self, gossip_addr: Addr) -> GossipConfig:
        cfg = self.config
        return GossipConfig(
            name=self.node_name,
            gossip_addr=gossip_addr,
            http_addr=cfg.advertise,
            zone=cfg.zone,
            generation=int(time.time() * 1000),
            probe_interval_s=cfg.probe_interval_s,
            probe_timeout_s=cfg.probe_timeout_s,
            gossip_interval_s=cfg.gossip_interval_s,
            push_pull_interval_s=cfg.push_pull_interval_s,
            suspicion_mult=cfg.suspicion_mult,
            dead_reclaim_s=cfg.dead_reclaim_s,
            tombstone_grace_s=cfg.tombstone_grace_s,
        )

    async def start(self) -> None:
        """Validate flags, bind gossip UDP+TCP, start discovery and join the seeds found."""
        cfg = self.config
        try:
            listen = parse_host_port(
                cfg.gossip_listen, flag="--gossip-listen", allow_port_zero=True
            )
        except DiscoveryConfigError as exc:
            raise GossipConfigError(str(exc)) from None
        keyring = load_keyring(cfg.cluster_key_file)
        adv_host = _gossip_advertise_host(cfg, listen.host)
        try:
            sources = self._sources(listen.port or DEFAULT_GOSSIP_PORT)
        except DiscoveryConfigError as exc:
            raise GossipConfigError(str(exc)) from None
        if cfg.mdns and not cfg.mdns_interfaces:
            raise GossipConfigError(
                "--mdns needs at least one --mdns-interface ADDRESS (never all interfaces)"
            )

        def make_core(bound: Addr) -> GossipCore:
            gossip_addr = (adv_host, bound[1])
            return GossipCore(self._core_config(gossip_addr), self._rng, self.clock.now(), keyring)

        self._driver.add_event_callback(self._on_event)
        bound = await self._driver.start(listen.host, listen.port, make_core)
        self._started = True
        try:
            if cfg.mdns:
                announcement = MdnsAnnouncement(
                    node_name=self.node_name,
                    gossip=SeedAddress(adv_host, bound[1]),
                    advertise=cfg.advertise,
                    zone=cfg.zone,
                )
                self._mdns = MdnsDiscovery(
                    announcement, cfg.mdns_interfaces, on_change=self._wake_poller
                )
                await self._mdns.start()
                sources.append(self._mdns)
            own = self.gossip_address
            self._poller = SeedPoller(
                sources=sources,
                on_seeds=self._on_seeds,
                clock=self.clock,
                interval_s=cfg.seed_interval_s,
                exclude=frozenset({SeedAddress(*own), SeedAddress(*bound)}),
            )
            self._poller.start()
        except DiscoveryConfigError as exc:
            await self.stop(leave=False)
            raise GossipConfigError(str(exc)) from None
        except BaseException:
            await self.stop(leave=False)
            raise
        log.info(
            "gossip listening on %s as %s (advertised %s)",
            format_host_port(*bound),
            self.node_name,
            format_host_port(*self.gossip_address),
        )

    async def stop(self, *, leave: bool = True) -> None:
        """Stop discovery, leave the cluster gracefully, close the sockets. Idempotent."""
        if not self._started:
            return
        self._started = False
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        await self._driver.stop(leave=leave)
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None

    def _on_event(self, event: Event) -> None:
        """Count every core event by type (one dict update; the metrics read the counts) and
        log it."""
        kind = type(event)
        counts = self._event_counts
        counts[kind] = counts.get(kind, 0) + 1
        _log_event(event)

    def _wake_poller(self) -> None:
        if self._poller is not None:
            self._poller.wake()

    async def _on_seeds(self, seeds: list[SeedAddress]) -> None:
        if not self._driver.running:
            return
        known_live = {
            m.gossip_addr
            for m in self._driver.core.members()
            if m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        }
        fresh = [(s.host, s.port) for s in seeds if (s.host, s.port) not in known_live]
        if fresh:
            self.seeds_joined += len(fresh)
            log.debug("joining seeds %s", fresh)
            self._driver.join(fresh)

    # -- what node.py calls -------------------------------------------------------------------

    @property
    def gossip_address(self) -> Addr:
        """The gossip address peers use to reach this node (valid after ``start``)."""
        return self._driver.core.config.gossip_addr

    @property
    def bound_address(self) -> Addr:
        """The socket address actually bound (may be a wildcard)."""
        if self._driver.address is None:
            raise RuntimeError("GossipService.start() has not run")
        return self._driver.address

    def members(self) -> list[Member]:
        """Every member this node knows (itself included), in any status."""
        return self._driver.core.members()

    def coordinates(self) -> dict[str, Coordinate]:
        """Network coordinates by member name, this node's included (see ``GossipCore``)."""
        return self._driver.core.coordinates()

    def holders(self, digest: str) -> list[Member]:
        """Live peers holding ``digest``, nearest first."""
        return self._driver.core.holders(digest)

    def fetchers(self, digest: str) -> list[Member]:
        """Live peers fetching ``digest`` right now, nearest first."""
        return self._driver.core.fetchers(digest)

    def advertise_have(self, digest: str) -> None:
        self._driver.core.advertise_have(digest)
        self._driver.flush()

    def advertise_have_many(self, digests: Iterable[str]) -> int:
        """Advertise ``have`` for every digest, then flush the driver once; the number given.

        For start-up, when a node re-announces every committed blob: N digests cost N catalog
        updates and one flush, not N flushes. Digests already advertised change nothing.
        """
        core = self._driver.core
        count = 0
        for digest in digests:
            core.advertise_have(digest)
            count += 1
        self._driver.flush()
        return count

    def advertise_fetching(self, digest: str) -> None:
        self._driver.core.advertise_fetching(digest)
        self._driver.flush()

    def advertise_drop(self, digest: str) -> None:
        self._driver.core.advertise_drop(digest)
        self._driver.flush()

    def advertise_load(self, load: float) -> None:
        self._driver.core.advertise_load(load)
        self._driver.flush()

    def add_event_callback(self, callback: EventCallback) -> None:
        """Called with every core event (joined, suspect, dead, left, catalog changes)."""
        self._driver.add_event_callback(callback)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for metrics (``p2preg.registry.metrics`` reads this at scrape time).

        Totals since start: ``packets_sent``/``_received``, ``bytes_sent``/``_received``,
        ``probes``, ``indirect_probes``, ``failed_probes``, ``push_pulls``, ``drops`` (reason ->
        count, the fixed ``DropReason`` set), ``driver`` (stream and send counters),
        ``seeds_joined``; membership transitions seen here: ``joins``, ``suspicions``,
        ``suspicions_refuted`` (a suspect proved alive), ``deaths`` (declared dead, not left),
        ``leaves``, ``refutations`` (this node refuted a suspicion about itself), ``name_conflicts``
(another live node answered with this node's name). Current values:
        ``members`` (status -> count, this node included), ``live_members``,
        ``awareness_score`` (Lifeguard, 0 = healthy), ``catalog_entries`` (digests some node
        holds or is fetching) and ``catalog_records`` (entries held for all nodes, tombstones
        included: the catalog's memory); tombstone collection: ``tombstones_collected``,
        ``full_resyncs_sent``/``_applied`` (a replica behind a collected tombstone got a node's
        whole state). Cost: O(members + nodes) per scrape, nothing per packet.
        """
        core = self._driver.core
        s = core.stats
        events = self._event_counts
        return {
            "packets_sent": s.packets_sent,
            "packets_received": s.packets_received,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "probes": s.probes,
            "indirect_probes": s.indirect_probes,
            "failed_probes": s.failed_probes,
            "push_pulls": s.push_pulls,
            "drops": core.drops.as_dict(),
            "driver": dict(vars(self._driver.stats)),
            "seeds_joined": self.seeds_joined,
            "live_members": core.num_live(),
            "members": _member_counts(core),
            "joins": events.get(MemberJoined, 0),
            "suspicions": events.get(MemberSuspect, 0),
            "suspicions_refuted": events.get(MemberAlive, 0),
            "deaths": events.get(MemberDead, 0),
            "leaves": events.get(MemberLeft, 0),
            "refutations": events.get(LocalRefuted, 0),
            "name_conflicts": events.get(NameConflict, 0),
            "awareness_score": core.awareness_score,
            "catalog_entries": core.catalog.digest_count(),
            "catalog_records": core.catalog.entry_count(),
            "tombstones_collected": core.catalog.tombstones_collected,
            "full_resyncs_sent": core.catalog.full_resyncs_sent,
            "full_resyncs_applied": core.catalog.full_resyncs_applied,
        }


def _member_counts(core: GossipCore) -> dict[str, int]:
    """Members by status as this node sees them, itself included (``left`` while leaving)."""
    counts = dict.fromkeys((status.value for status in MemberStatus), 0)
    counts[MemberStatus.LEFT if core.leaving else MemberStatus.ALIVE] += 1
    for member in core.table.states():
        counts[member.status] += 1
    return counts


# --- the standalone runner -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2preg.gossip.service",
        description="Run only the gossip layer and GET /p2p/v1/members (tests, debugging).",
    )
    p.add_argument("--gossip-listen", default=f"0.0.0.0:{DEFAULT_GOSSIP_PORT}", metavar="HOST:PORT")
    p.add_argument("--http-listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.add_argument("--join", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--join-dns", action="append", default=[], metavar="NAME[:PORT]")
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--mdns-interface", action="append", default=[], metavar="ADDR")
    p.add_argument("--cluster-key-file", default=None, metavar="FILE")
    p.add_argument("--node-name", default="", metavar="NAME")
    p.add_argument("--zone", default="", metavar="ZONE")
    p.add_argument("--advertise", default="", metavar="HOST:PORT")
    p.add_argument("--gossip-advertise", default="", metavar="HOST")
    p.add_argument("--probe-interval-s", type=float, default=1.0)
    p.add_argument("--probe-timeout-s", type=float, default=0.5)
    p.add_argument("--gossip-interval-s", type=float, default=0.2)
    p.add_argument("--push-pull-interval-s", type=float, default=30.0)
    p.add_argument("--suspicion-mult", type=int, default=4)
    p.add_argument("--dead-reclaim-s", type=float, default=60.0)
    p.add_argument("--tombstone-grace-s", type=float, default=3600.0)
    p.add_argument("--seed-interval-s", type=float, default=30.0)
    p.add_argument("--leave-timeout-s", type=float, default=1.0)
    p.add_argument("--random-seed", type=int, default=None)
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(args: argparse.Namespace, http_addr: str) -> GossipServiceConfig:
    return GossipServiceConfig(
        gossip_listen=args.gossip_listen,
        join=tuple(args.join),
        join_dns=tuple(args.join_dns),
        mdns=args.mdns,
        mdns_interfaces=tuple(args.mdns_interface),
        cluster_key_file=args.cluster_key_file,
        node_name=args.node_name,
        zone=args.zone,
        advertise=args.advertise or http_addr,
        gossip_advertise=args.gossip_advertise,
        probe_interval_s=args.probe_interval_s,
        probe_timeout_s=args.probe_timeout_s,
        gossip_interval_s=args.gossip_interval_s,
        push_pull_interval_s=args.push_pull_interval_s,
        suspicion_mult=args.suspicion_mult,
        dead_reclaim_s=args.dead_reclaim_s,
        tombstone_grace_s=args.tombstone_grace_s,
        seed_interval_s=args.seed_interval_s,
        leave_timeout_s=args.leave_timeout_s,
        random_seed=args.random_seed,
    )


async def _run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from p2preg.gossip.http import members_routes

    try:
        http = parse_host_port(args.http_listen, flag="--http-listen", allow_port_zero=True)
    except DiscoveryConfigError as exc:
        raise GossipConfigError(str(exc)) from None
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)
    holder: list[GossipService] = []

    class _Source:
        @property
        def node_name(self) -> str:
            return holder[0].node_name

        def members(self) -> list[Member]:
            return holder[0].members()

    app.add_routes(members_routes(_Source()))
    await runner.setup()
    await web.TCPSite(runner, http.host, http.port).start()
    http_bound = runner.addresses[0]
    http_addr = format_host_port(str(http_bound[0]), int(http_bound[1]))
    service = GossipService(config_from_args(args, http_addr))
    holder.append(service)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await service.start()
        except OSError as exc:
            print(f"p2preg: cannot start gossip: {exc}", file=sys.stderr)
            return 1
        print(
            json.dumps(
                {
                    "node": service.node_name,
                    "gossip": format_host_port(*service.gossip_address),
                    "http": http_addr,
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        await service.stop()
        await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    try:
        with runner:
            return runner.run(_run(args))
    except ConfigError as exc:
        print(f"p2preg: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
