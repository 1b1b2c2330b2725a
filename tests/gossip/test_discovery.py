"""Specification of seed discovery: flag parsing, DNS seeds, the poller, mDNS on loopback."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from p2preg.clock import FakeClock
from p2preg.gossip.discovery import (
    DiscoveryConfigError,
    DnsSeeds,
    MdnsAnnouncement,
    MdnsDiscovery,
    SeedAddress,
    SeedPoller,
    StaticSeeds,
    parse_host_port,
    parse_mdns_info,
)


class FakeResolver:
    """A DNS server in a dict: name -> addresses; a missing name fails like NXDOMAIN."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.queries: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.queries.append(name)
        if name not in self.records:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return list(self.records[name])


# --- static --join parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:7946", SeedAddress("10.0.0.1", 7946)),
        ("node-a.example:1", SeedAddress("node-a.example", 1)),
        ("[::1]:65535", SeedAddress("::1", 65535)),
        ("  127.0.0.1:7946 ", SeedAddress("127.0.0.1", 7946)),
    ],
)
def test_join_accepts_host_port_forms(text: str, expected: SeedAddress) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10.0.0.1", "port is missing"),
        ("10.0.0.1:", "is not a number"),
        ("10.0.0.1:http", "is not a number"),
        ("10.0.0.1:0", "outside 1-65535"),
        ("10.0.0.1:65536", "outside 1-65535"),
        (":7946", "host is empty"),
        ("", "host is empty"),
        ("::1:7946", "need brackets"),
        ("[::1:7946", "missing ']'"),
        ("[nothost]:7946", "not an IPv6 address"),
        ("[::1]7946", "expected ':PORT'"),
        ("user@host:7946", "not a host name"),
        ("a b:7946", "not a host name"),
    ],
)
def test_join_rejects_malformed_values_naming_flag_and_value(text: str, complaint: str) -> None:
    with pytest.raises(DiscoveryConfigError) as info:
        StaticSeeds([text])
    assert complaint in str(info.value)
    assert "--join" in str(info.value)
    assert repr(text) in str(info.value)


def test_bracketed_ipv6_prints_back_with_brackets() -> None:
    assert str(SeedAddress("::1", 7946)) == "[::1]:7946"
    assert str(SeedAddress("10.0.0.1", 7946)) == "10.0.0.1:7946"


async def test_static_seeds_pass_ip_literals_without_asking_the_resolver() -> None:
    resolver = FakeResolver({})
    seeds = StaticSeeds(["127.0.0.1:7000", "[::1]:7001"], resolver=resolver)
    assert await seeds.seeds() == [SeedAddress("127.0.0.1", 7000), SeedAddress("::1", 7001)]
    assert resolver.queries == []


async def test_static_seeds_resolve_host_names_and_skip_ones_that_fail() -> None:
    resolver = FakeResolver({"good.example": ["10.0.0.5", "fd00::5"]})
    seeds = StaticSeeds(["good.example:7946", "gone.example:7946"], resolver=resolver)
    assert await seeds.seeds() == [SeedAddress("10.0.0.5", 7946), SeedAddress("fd00::5", 7946)]
    assert seeds.stats.failures == 1
    assert "gone.example" in seeds.stats.last_error


# --- --join-dns ------------------------------------------------------------------------------


async def test_dns_seeds_return_every_a_and_aaaa_record_with_the_default_port() -> None:
    resolver = FakeResolver({"p2preg.ns.svc": ["10.1.0.3", "10.1.0.1", "fd00::2"]})
    dns = DnsSeeds("p2preg.ns.svc", default_port=7946, resolver=resolver)
    assert await dns.seeds() == [
        SeedAddress("10.1.0.1", 7946),
        SeedAddress("10.1.0.3", 7946),
        SeedAddress("fd00::2", 7946),
    ]


async def test_dns_seeds_honour_an_explicit_port() -> None:
    resolver = FakeResolver({"peers.local": ["10.1.0.1"]})
    dns = DnsSeeds("peers.local:8000", default_port=7946, resolver=resolver)
    assert await dns.seeds() == [SeedAddress("10.1.0.1", 8000)]


async def test_dns_seeds_are_re_resolved_on_every_poll() -> None:
    resolver = FakeResolver({"svc": ["10.1.0.1"]})
    dns = DnsSeeds("svc", default_port=7946, resolver=resolver)
    assert await dns.seeds() == [SeedAddress("10.1.0.1", 7946)]
    resolver.records["svc"] = ["10.1.0.1", "10.1.0.2"]  # a pod became ready
    assert await dns.seeds() == [SeedAddress("10.1.0.1", 7946), SeedAddress("10.1.0.2", 7946)]
    assert resolver.queries == ["svc", "svc"]


async def test_dns_failure_yields_no_seeds_and_is_counted_not_raised() -> None:
    dns = DnsSeeds("missing.svc", default_port=7946, resolver=FakeResolver({}))
    assert await dns.seeds() == []
    assert dns.stats.failures == 1
    assert "Name or service not known" in dns.stats.last_error


def test_dns_flag_errors_name_the_dns_flag() -> None:
    with pytest.raises(DiscoveryConfigError, match="--join-dns"):
        DnsSeeds("svc:notaport", default_port=7946)


async def test_system_resolver_resolves_localhost_to_loopback() -> None:
    from p2preg.gossip.discovery import system_resolver

    addrs = await system_resolver("localhost")
    assert addrs
    assert set(addrs) <= {"127.0.0.1", "::1"}


# --- the poller --------------------------------------------------------------------------------


class ListSource:
    def __init__(self, label: str, seeds: list[SeedAddress]) -> None:
        self._label = label
        self.current = seeds

    @property
    def label(self) -> str:
        return self._label

    async def seeds(self) -> list[SeedAddress]:
        return list(self.current)


class BrokenSource:
    @property
    def label(self) -> str:
        return "broken"

    async def seeds(self) -> list[SeedAddress]:
        raise RuntimeError("boom")


async def test_poller_hands_over_the_union_without_duplicates_or_self() -> None:
    me = SeedAddress("127.0.0.1", 7000)
    a, b = SeedAddress("127.0.0.1", 7001), SeedAddress("127.0.0.1", 7002)
    got: list[list[SeedAddress]] = []

    async def on_seeds(seeds: list[SeedAddress]) -> None:
        got.append(seeds)

    poller = SeedPoller(
        sources=[ListSource("x", [me, a]), BrokenSource(), ListSource("y", [a, b])],
        on_seeds=on_seeds,
        clock=FakeClock(),
        exclude=frozenset({me}),
    )
    assert await poller.poll_once() == [a, b]
    assert got == [[a, b]]


async def test_poller_polls_again_after_each_interval_on_the_fake_clock() -> None:
    clock = FakeClock()
    source = ListSource("dns", [SeedAddress("10.0.0.1", 1)])
    polled = asyncio.Queue[list[SeedAddress]]()

    async def on_seeds(seeds: list[SeedAddress]) -> None:
        polled.put_nowait(seeds)

    poller = SeedPoller(sources=[source], on_seeds=on_seeds, clock=clock, interval_s=30.0)
    poller.start()
    try:
        assert await asyncio.wait_for(polled.get(), 5) == [SeedAddress("10.0.0.1", 1)]
        source.current = [SeedAddress("10.0.0.2", 1)]
        clock.advance(29.0)
        await asyncio.sleep(0)
        assert polled.empty()
        clock.advance(1.0)
        assert await asyncio.wait_for(polled.get(), 5) == [SeedAddress("10.0.0.2", 1)]
        assert poller.rounds == 2
    finally:
        await poller.stop()


async def test_poller_wake_polls_immediately_without_waiting_for_the_interval() -> None:
    clock = FakeClock()
    polled = asyncio.Queue[list[SeedAddress]]()

    async def on_seeds(seeds: list[SeedAddress]) -> None:
        polled.put_nowait(seeds)

    poller = SeedPoller(sources=[], on_seeds=on_seeds, clock=clock, interval_s=3600.0)
    poller.start()
    try:
        await asyncio.wait_for(polled.get(), 5)
        poller.wake()
        await asyncio.wait_for(polled.get(), 5)
        assert poller.rounds == 2
    finally:
        await poller.stop()


# --- mDNS --------------------------------------------------------------------------------------


def _announcement(name: str, port: int) -> MdnsAnnouncement:
    return MdnsAnnouncement(name, SeedAddress("127.0.0.1", port), "127.0.0.1:5000", "zone-a")


@pytest.mark.parametrize("interfaces", [[], ["0.0.0.0"], ["::"], ["eth0"], ["224.0.0.251"]])
def test_mdns_refuses_to_start_without_an_explicit_interface_address(
    interfaces: list[str],
) -> None:
    with pytest.raises(DiscoveryConfigError, match="mdns"):
        MdnsDiscovery(_announcement("n1", 7000), interfaces)


def test_mdns_txt_record_gossip_entry_wins_over_the_srv_address() -> None:
    props: dict[str, str | None] = {
        "node": "n2",
        "gossip": "10.0.0.2:7946",
        "http": "10.0.0.2:5000",
        "zone": "z",
    }
    ann = parse_mdns_info(1234, ["10.9.9.9"], props)
    assert ann == MdnsAnnouncement("n2", SeedAddress("10.0.0.2", 7946), "10.0.0.2:5000", "z")


@pytest.mark.parametrize(
    ("port", "addresses", "props"),
    [
        (7946, ["10.0.0.2"], {}),
        (7946, [], {"node": "n2", "gossip": "garbage"}),
        (None, ["10.0.0.2"], {"node": "n2"}),
    ],
)
def test_mdns_records_without_a_usable_address_are_ignored(
    port: int | None, addresses: list[str], props: dict[str, str | None]
) -> None:
    assert parse_mdns_info(port, addresses, props) is None


def test_mdns_wildcard_gossip_entry_falls_back_to_the_srv_address() -> None:
    ann = parse_mdns_info(7946, ["10.0.0.2"], {"node": "n2", "gossip": "0.0.0.0:7946"})
    assert ann is not None
    assert ann.gossip == SeedAddress("10.0.0.2", 7946)


async def test_two_mdns_nodes_bound_to_loopback_find_each_other() -> None:
    token = secrets.token_hex(3)  # concurrent runs on this machine share loopback mDNS
    changed = asyncio.Event()
    one = MdnsDiscovery(_announcement(f"one-{token}", 17001), ["127.0.0.1"], on_change=changed.set)
    two = MdnsDiscovery(_announcement(f"two-{token}", 17002), ["127.0.0.1"])
    await one.start()
    await two.start()
    try:
        async with asyncio.timeout(10):
            while not (
                SeedAddress("127.0.0.1", 17002) in await one.seeds()
                and SeedAddress("127.0.0.1", 17001) in await two.seeds()
            ):
                await asyncio.sleep(0.05)
        assert changed.is_set()  # the poller would have been woken
        peer = next(p for p in one.peers.values() if p.node_name == f"two-{token}")
        assert (peer.advertise, peer.zone) == ("127.0.0.1:5000", "zone-a")
        assert SeedAddress("127.0.0.1", 17001) not in await one.seeds()  # never itself
    finally:
        await one.stop()
        await two.stop()
