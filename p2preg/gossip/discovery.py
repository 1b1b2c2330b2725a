"""Seed discovery: where a node finds the gossip addresses of peers to join.

Owns the three seed sources and the loop that polls them:

* ``StaticSeeds``: ``--join HOST:PORT`` (repeatable); host names are resolved on every poll.
* ``DnsSeeds``: ``--join-dns NAME[:PORT]``; every A and AAAA record of the name, re-resolved on each
  poll (a Kubernetes headless Service lists one record per ready pod). The resolver is injectable.
* ``MdnsDiscovery``: zeroconf/mDNS, service type ``_p2preg._tcp.local.``; registers this node (TXT:
  node name, gossip address, HTTP advertise address, zone) and browses for the others. It binds
  ONLY to the interface addresses it is given and refuses to start without one: mDNS on every
  interface would leak onto networks nobody asked for.
* ``SeedPoller``: asks every source for its seeds every ``interval_s`` (or sooner when woken, e.g.
  by an mDNS announcement) and hands the union to a callback. It reads time only through a
  ``p2preg.clock.Clock`` so tests drive it with ``FakeClock``.

A source never raises from ``seeds()``: a failing lookup is logged, counted and yields nothing.
Parsing errors in flags raise ``DiscoveryConfigError`` up front, with the flag and value in the
message. Must not import the gossip core, the driver, aiohttp or any other p2preg module except
``p2preg.clock``; zeroconf is imported here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2preg.clock import Clock
from p2preg.gossip.config import format_host_port

log = logging.getLogger(__name__)

MDNS_SERVICE_TYPE = "_p2preg._tcp.local."
"""The DNS-SD service type every p2preg node registers and browses."""

Resolver = Callable[[str], Awaitable[list[str]]]
"""Maps a host name to its IP addresses (A and AAAA), as strings. Raises ``OSError`` on failure."""

SeedsCallback = Callable[[list["SeedAddress"]], Awaitable[None]]


class DiscoveryConfigError(ValueError):
    """A discovery flag has a value that cannot work (the operator's fault, reported at start)."""


@dataclass(frozen=True, order=True)
class SeedAddress:
    """One gossip address (UDP and TCP on the same port) that may belong to a peer."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def _parse_port(text: str, flag: str, value: str, allow_zero: bool) -> int:
    if not text.isdigit():
        raise DiscoveryConfigError(f"{flag} {value!r}: port {text!r} is not a number")
    port = int(text)
    lowest = 0 if allow_zero else 1
    if not lowest <= port <= 65535:
        raise DiscoveryConfigError(f"{flag} {value!r}: port {port} is outside {lowest}-65535")
    return port


def _check_host(host: str, flag: str, value: str) -> str:
    if not host:
        raise DiscoveryConfigError(f"{flag} {value!r}: the host is empty")
    if any(c.isspace() for c in host) or "/" in host or "@" in host:
        raise DiscoveryConfigError(f"{flag} {value!r}: {host!r} is not a host name or address")
    return host


def parse_host_port(
    value: str,
    *,
    flag: str = "--join",
    default_port: int | None = None,
    allow_port_zero: bool = False,
) -> SeedAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or (with ``default_port``) a bare ``HOST`` / ``V6``.

    Port 0 ("any free port") is accepted only with ``allow_port_zero`` (listen addresses).

    Raises ``DiscoveryConfigError`` naming ``flag`` and the value when it cannot be parsed.
    """
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise DiscoveryConfigError(f"{flag} {value!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise DiscoveryConfigError(
                f"{flag} {value!r}: {host!r} is not an IPv6 address"
            ) from None
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise DiscoveryConfigError(f"{flag} {value!r}: expected ':PORT' after ']'")
    elif text.count(":") > 1:
        # A bare IPv6 literal: only valid without a port.
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise DiscoveryConfigError(
                f"{flag} {value!r}: IPv6 addresses need brackets, e.g. [::1]:7946"
            ) from None
        if default_port is None:
            raise DiscoveryConfigError(
                f"{flag} {value!r}: the port is missing (IPv6 addresses need brackets, "
                "e.g. [::1]:7946)"
            )
        host, port_text = text, None
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, None
    host = _check_host(host, flag, value)
    if port_text is None:
        if default_port is None:
            raise DiscoveryConfigError(
                f"{flag} {value!r}: expected HOST:PORT (the port is missing)"
            )
        return SeedAddress(host, default_port)
    return SeedAddress(host, _parse_port(port_text, flag, value, allow_port_zero))


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def system_resolver(name: str) -> list[str]:
    """Every A and AAAA address of ``name`` through the event loop's resolver, in answer order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in out:
            out.append(addr)
    return out


class SeedSource(Protocol):
    """Anything that can list candidate gossip addresses right now."""

    @property
    def label(self) -> str: ...

    async def seeds(self) -> list[SeedAddress]: ...


@dataclass
class SourceStats:
    """Counters a source keeps for operators (exported by the service)."""

    polls: int = 0
    failures: int = 0
    last_error: str = ""


class StaticSeeds:
    """``--join HOST:PORT`` flags: parsed once (bad values raise), host names resolved per poll."""

    def __init__(self, joins: Sequence[str], *, resolver: Resolver = system_resolver) -> None:
        self.addresses = [parse_host_port(j, flag="--join") for j in joins]
        self._resolver = resolver
        self.stats = SourceStats()

    @property
    def label(self) -> str:
        return "static"

    async def seeds(self) -> list[SeedAddress]:
        self.stats.polls += 1
        out: list[SeedAddress] = []
        for addr in self.addresses:
            if _is_ip_literal(addr.host):
                out.append(addr)
                continue
            try:
                ips = await self._resolver(addr.host)
            except (OSError, UnicodeError) as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{addr.host}: {exc}"
                log.warning("--join %s: cannot resolve: %s", addr, exc)
                continue
            out.extend(SeedAddress(ip, addr.port) for ip in ips)
        return out


class DnsSeeds:
    """``--join-dns NAME[:PORT]``: all A/AAAA records of NAME, re-resolved on every poll.

    Without a port the node's own gossip port is used (every pod of a Deployment listens on the
    same one).
    """

    def __init__(
        self, value: str, *, default_port: int, resolver: Resolver = system_resolver
    ) -> None:
        self.target = parse_host_port(value, flag="--join-dns", default_port=default_port)
        self._resolver = resolver
        self.stats = SourceStats()

    @property
    def label(self) -> str:
        return f"dns:{self.target.host}"

    async def seeds(self) -> list[SeedAddress]:
        self.stats.polls += 1
        try:
            ips = await self._resolver(self.target.host)
        except (OSError, UnicodeError) as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            log.warning("--join-dns %s: cannot resolve: %s", self.target.host, exc)
            return []
        return [SeedAddress(ip, self.target.port) for ip in sorted(set(ips))]


@dataclass(frozen=True)
class MdnsAnnouncement:
    """What this node publishes over mDNS (and what it reads back from peers' TXT records)."""

    node_name: str
    gossip: SeedAddress
    advertise: str = ""
    zone: str = ""


def _check_mdns_interfaces(interfaces: Sequence[str]) -> list[str]:
    if not interfaces:
        raise DiscoveryConfigError(
            "--mdns needs at least one --mdns-interface ADDRESS; "
            "refusing to send mDNS on every interface"
        )
    out: list[str] = []
    for iface in interfaces:
        try:
            ip = ipaddress.ip_address(iface)
        except ValueError:
            raise DiscoveryConfigError(
                f"--mdns-interface {iface!r}: expected the IP address of an interface"
            ) from None
        if ip.is_unspecified or ip.is_multicast:
            raise DiscoveryConfigError(
                f"--mdns-interface {iface!r}: must be one interface's address, not a wildcard"
            )
        out.append(str(ip))
    return out


class MdnsDiscovery:
    """Register this node and browse for peers over mDNS, on the given interfaces only."""

    def __init__(
        self,
        announcement: MdnsAnnouncement,
        interfaces: Sequence[str],
        *,
        service_type: str = MDNS_SERVICE_TYPE,
        request_timeout_s: float = 3.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.interfaces = _check_mdns_interfaces(interfaces)
        if not announcement.node_name or "." in announcement.node_name:
            raise DiscoveryConfigError(
                f"mDNS: node name {announcement.node_name!r} must be non-empty and contain no '.'"
            )
        self.announcement = announcement
        self.service_type = service_type
        self._request_timeout_s = request_timeout_s
        self._on_change = on_change
        self._peers: dict[str, MdnsAnnouncement] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self.stats = SourceStats()

    @property
    def label(self) -> str:
        return "mdns"

    @property
    def peers(self) -> dict[str, MdnsAnnouncement]:
        """Peers seen so far, by mDNS instance name (never this node)."""
        return dict(self._peers)

    def _ip_version(self) -> IPVersion:
        versions = {ipaddress.ip_address(i).version for i in self.interfaces}
        if versions == {4}:
            return IPVersion.V4Only
        if versions == {6}:
            return IPVersion.V6Only
        return IPVersion.All

    def _service_info(self) -> AsyncServiceInfo:
        ann = self.announcement
        props = {"node": ann.node_name, "gossip": str(ann.gossip), "http": ann.advertise}
        if ann.zone:
            props["zone"] = ann.zone
        return AsyncServiceInfo(
            self.service_type,
            f"{ann.node_name}.{self.service_type}",
            port=ann.gossip.port,
            parsed_addresses=[ann.gossip.host],
            properties=props,
            server=f"{ann.node_name}.p2preg.local.",
        )

    async def start(self) -> None:
        """Bind zeroconf to ``interfaces``, register this node, start browsing."""
        zc = AsyncZeroconf(interfaces=list(self.interfaces), ip_version=self._ip_version())
        self._zc = zc
        info = self._service_info()
        self._info = info
        await zc.async_register_service(info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(
            zc.zeroconf, [self.service_type], handlers=[self._on_service_state_change]
        )

    async def stop(self) -> None:
        """Unregister (peers see a goodbye), stop browsing, close the sockets."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        browser, zc, info = self._browser, self._zc, self._info
        self._browser = self._zc = self._info = None
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            if info is not None:
                with contextlib.suppress(Exception):
                    await zc.async_unregister_service(info)
            await zc.async_close()

    def _on_service_state_change(self, **kwargs: object) -> None:
        name = str(kwargs["name"])
        change = kwargs["state_change"]
        if change is ServiceStateChange.Removed:
            self._peers.pop(name, None)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        zc = self._zc
        if zc is None:
            return
        info = AsyncServiceInfo(self.service_type, name)
        try:
            found = await info.async_request(zc.zeroconf, self._request_timeout_s * 1000)
        except Exception as exc:  # zeroconf raises several kinds; a bad peer must not stop us
            self.stats.failures += 1
            self.stats.last_error = f"{name}: {exc}"
            return
        if not found:
            return
        ann = parse_mdns_info(info.port, info.parsed_addresses(), info.decoded_properties)
        if ann is None or ann.node_name == self.announcement.node_name:
            return
        is_new = self._peers.get(name) != ann
        self._peers[name] = ann
        if is_new and self._on_change is not None:
            self._on_change()

    async def seeds(self) -> list[SeedAddress]:
        self.stats.polls += 1
        return sorted({ann.gossip for ann in self._peers.values()})


def parse_mdns_info(
    port: int | None, addresses: Iterable[str], props: dict[str, str | None]
) -> MdnsAnnouncement | None:
    """Turn a peer's mDNS record into an announcement, or ``None`` when it is unusable.

    The TXT ``gossip`` entry wins; else the first A/AAAA address with the SRV port.
    """
    node = props.get("node") or ""
    if not node:
        return None
    gossip: SeedAddress | None = None
    gossip_text = props.get("gossip")
    if gossip_text:
        with contextlib.suppress(DiscoveryConfigError):
            gossip = parse_host_port(gossip_text, flag="mdns txt gossip")
        if gossip is not None and ipaddress.ip_address(gossip.host).is_unspecified:
            gossip = None
    if gossip is None:
        addrs = list(addresses)
        if not addrs or not port:
            return None
        gossip = SeedAddress(addrs[0], port)
    return MdnsAnnouncement(
        node_name=node,
        gossip=gossip,
        advertise=props.get("http") or "",
        zone=props.get("zone") or "",
    )


class SeedPoller:
    """Poll every source every ``interval_s`` (or when woken) and pass the union to ``on_seeds``.

    ``exclude`` holds this node's own gossip addresses, which are never handed out. ``rounds``
    counts completed polls.
    """

    def __init__(
        self,
        sources: Sequence[SeedSource],
        on_seeds: SeedsCallback,
        clock: Clock,
        *,
        interval_s: float = 30.0,
        exclude: frozenset[SeedAddress] = frozenset(),
    ) -> None:
        self.sources = list(sources)
        self.on_seeds = on_seeds
        self.clock = clock
        self.interval_s = interval_s
        self.exclude = exclude
        self.rounds = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> list[SeedAddress]:
        """Ask every source once; return (and hand to ``on_seeds``) the de-duplicated union."""
        found: set[SeedAddress] = set()
        for source in self.sources:
            try:
                found.update(await source.seeds())
            except Exception:  # a source must never stop discovery; it logs and counts itself
                log.exception("seed source %s failed", source.label)
        seeds = sorted(found - self.exclude)
        self.rounds += 1
        await self.on_seeds(seeds)
        return seeds

    def wake(self) -> None:
        """Poll now instead of at the next interval (mDNS just saw someone new)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:
                log.exception("seed callback failed")
            sleeper = asyncio.ensure_future(self.clock.sleep(self.interval_s))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
