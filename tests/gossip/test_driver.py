"""Specification of the asyncio driver and the service, in-process on 127.0.0.1 sockets.

Several services run in one event loop with short protocol intervals; every wait is bounded
and waits for a condition, not for a fixed time.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2preg.gossip.member import MemberStatus
from p2preg.gossip.service import (
    GossipConfigError,
    GossipService,
    GossipServiceConfig,
    load_keyring,
)
from p2preg.gossip.wire import PROTOCOL_VERSION, MessageType
from tests.support.cluster import until
from tests.support.gossip import ServiceFactory, fast_config, gossip_address, gossip_services

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
async def start_service() -> AsyncIterator[ServiceFactory]:
    async with gossip_services() as start:
        yield start


def _alive_names(svc: GossipService) -> set[str]:
    return {m.name for m in svc.members() if m.status == MemberStatus.ALIVE}


async def test_a_node_joins_through_a_static_seed_and_both_see_each_other_alive(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: _alive_names(a) == {"a", "b"} and _alive_names(b) == {"a", "b"})
    peer = next(m for m in b.members() if m.name == "a")
    assert peer.gossip_addr == a.gossip_address
    assert peer.http_addr == "127.0.0.1:5001"


async def test_a_have_advertised_on_one_node_makes_it_a_holder_on_the_other(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: _alive_names(b) == {"a", "b"})
    a.advertise_have(DIGEST)
    await until(lambda: [m.name for m in b.holders(DIGEST)] == ["a"])
    a.advertise_drop(DIGEST)
    await until(lambda: b.holders(DIGEST) == [])


async def test_a_late_joiner_learns_the_existing_catalog(start_service: ServiceFactory) -> None:
    a = await start_service("a", seed=1)
    a.advertise_have(DIGEST)
    a.advertise_fetching("sha256:" + "cd" * 32)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: [m.name for m in b.holders(DIGEST)] == ["a"])
    await until(lambda: [m.name for m in b.fetchers("sha256:" + "cd" * 32)] == ["a"])


async def test_members_keep_exchanging_push_pulls_periodically(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: _alive_names(a) == {"a", "b"})

    def completed() -> int:
        return int(a.stats()["driver"]["streams_completed"]) + int(
            b.stats()["driver"]["streams_completed"]
        )

    after_join = completed()
    # push_pull_interval_s is 0.5 s here: a few more exchanges must happen on their own.
    await until(lambda: completed() >= after_join + 3)


async def test_a_graceful_stop_is_seen_as_left_not_dead(start_service: ServiceFactory) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: _alive_names(a) == {"a", "b"})
    await b.stop()
    await until(lambda: any(m.name == "b" and m.status == MemberStatus.LEFT for m in a.members()))


async def test_join_dns_joins_every_address_the_name_resolves_to(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2)
    assert a.gossip_address[1] != b.gossip_address[1]
    # One name, one port: both seeds are found through the record of their own host, each with
    # the port given in the flag.
    queried: list[str] = []

    async def resolver(name: str) -> list[str]:
        queried.append(name)
        return ["127.0.0.1"] if name == "p2preg.ns.svc.cluster.local" else []

    c = GossipService(
        fast_config("c", join_dns=(f"p2preg.ns.svc.cluster.local:{a.gossip_address[1]}",)),
        rng=random.Random(3),
        resolver=resolver,
    )
    await c.start()
    try:
        await until(lambda: _alive_names(c) == {"a", "c"})
        assert queried[0] == "p2preg.ns.svc.cluster.local"
    finally:
        await c.stop(leave=False)


async def test_nodes_with_different_cluster_keys_never_merge(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    key_a, key_b = tmp_path / "a.keys", tmp_path / "b.keys"
    key_a.write_text("00" * 32 + "\n")
    key_b.write_text("11" * 32 + "\n")
    a = await start_service("a", seed=1, cluster_key_file=str(key_a))
    b = await start_service("b", seed=2, cluster_key_file=str(key_b), join=(gossip_address(a),))
    await until(lambda: a.stats()["drops"]["unauthenticated"] >= 1)
    assert _alive_names(a) == {"a"}
    assert _alive_names(b) == {"b"}


async def test_packets_a_cluster_key_cannot_authenticate_are_named_in_one_warning(
    start_service: ServiceFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_a, key_b = tmp_path / "a.keys", tmp_path / "b.keys"
    key_a.write_text("00" * 32 + "\n")
    key_b.write_text("11" * 32 + "\n")
    caplog.set_level("WARNING", logger="p2preg.gossip.driver")
    a = await start_service("a", seed=1, cluster_key_file=str(key_a))
    await start_service("b", seed=2, cluster_key_file=str(key_b), join=(gossip_address(a),))
    await until(lambda: a.stats()["drops"]["unauthenticated"] >= 1)
    warnings = [r.getMessage() for r in caplog.records if "could not be authenticated" in
                r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line a minute, however many packets
    assert "--cluster-key-file" in warnings[0] and "00" * 32 not in warnings[0]


async def test_mid_rotation_nodes_on_either_primary_still_talk(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    # Rotation: add the new key everywhere, then switch primaries one node at a time.
    old, new = "22" * 32, "33" * 32
    (tmp_path / "added").write_text(f"{old}\n{new}\n")
    (tmp_path / "switched").write_text(f"# new primary first\n{new}\n{old}\n")
    a = await start_service("a", seed=1, cluster_key_file=str(tmp_path / "added"))
    b = await start_service(
        "b", seed=2, cluster_key_file=str(tmp_path / "switched"), join=(gossip_address(a),)
    )
    await until(lambda: _alive_names(a) == {"a", "b"} and _alive_names(b) == {"a", "b"})
    assert a.stats()["drops"]["unauthenticated"] == 0


# --- the push-pull TCP listener under bad input -------------------------------------------------


async def _connect(svc: GossipService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*svc.gossip_address)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    async with asyncio.timeout(timeout_s):
        return await reader.read(1) == b""


async def test_garbage_on_the_push_pull_port_closes_that_connection_only(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    reader, writer = await _connect(a)
    writer.write(struct.pack(">I", 10) + b"\xff" * 10)
    assert await _closed_by_peer(reader)
    writer.close()
    assert a.stats()["drops"]["new_version"] == 1  # 0xff is no version we speak
    await start_service("b", seed=2, join=(gossip_address(a),))  # the listener still works
    await until(lambda: _alive_names(a) == {"a", "b"})


async def test_an_oversized_frame_length_is_refused_before_reading_the_body(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    reader, writer = await _connect(a)
    writer.write(struct.pack(">I", 1 << 30))  # claims 1 GiB: never buffered
    assert await _closed_by_peer(reader)
    writer.close()
    assert a.stats()["drops"]["oversized"] == 1


async def test_a_well_framed_but_invalid_push_pull_message_is_dropped(
    start_service: ServiceFactory,
) -> None:
    import msgpack

    a = await start_service("a", seed=1)
    body = msgpack.packb([0, "not-a-bool", "junk", None])
    packet = bytes((PROTOCOL_VERSION, MessageType.PUSH_PULL)) + body
    reader, writer = await _connect(a)
    writer.write(struct.pack(">I", len(packet)) + packet)
    assert await _closed_by_peer(reader)
    writer.close()
    assert a.stats()["drops"]["malformed"] == 1
    assert _alive_names(a) == {"a"}


async def test_a_peer_that_stalls_mid_frame_is_cut_off_after_the_stream_timeout(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1, stream_timeout_s=0.2)
    reader, writer = await _connect(a)
    writer.write(struct.pack(">I", 100) + b"\x01")  # 1 of 100 promised bytes, then silence
    assert await _closed_by_peer(reader, timeout_s=5.0)
    writer.close()
    await until(lambda: a.stats()["driver"]["stream_timeouts"] == 1)


async def test_connections_beyond_the_stream_limit_are_refused(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1, stream_timeout_s=5.0)
    limit = 32
    conns = [await _connect(a) for _ in range(limit)]
    await until(lambda: a.stats()["driver"]["streams_accepted"] == limit)
    reader, writer = await _connect(a)
    assert await _closed_by_peer(reader)
    assert a.stats()["driver"]["streams_refused"] == 1
    for _, w in [*conns, (reader, writer)]:
        w.close()


async def test_garbage_datagrams_are_counted_and_change_nothing(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=a.gossip_address
    )
    try:
        for packet in (b"", b"\x01", b"\x63\x01\xc1", b"\x01\xee" + b"x" * 50, b"\x00" * 3000):
            transport.sendto(packet)
        await until(lambda: sum(a.stats()["drops"].values()) >= 4)
    finally:
        transport.close()
    assert _alive_names(a) == {"a"}
    assert a.stats()["driver"]["core_errors"] == 0


# --- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"mdns": True}, "--mdns-interface"),
        ({"mdns": True, "mdns_interfaces": ("0.0.0.0",)}, "wildcard"),
        ({"join": ("10.0.0.1",)}, "--join '10.0.0.1'"),
        ({"join_dns": ("svc:x",)}, "--join-dns"),
        ({"gossip_listen": "127.0.0.1"}, "--gossip-listen"),
        ({"gossip_listen": "0.0.0.0:0", "advertise": ""}, "needs --advertise"),
        ({"gossip_listen": "0.0.0.0:0", "advertise": "node1.example:5000"}, "IP address"),
        ({"gossip_listen": "0.0.0.0:0", "advertise": "node1"}, "--advertise 'node1'"),
        ({"gossip_listen": "localhost:0"}, "--gossip-listen localhost:0"),
        ({"cluster_key_file": "/nonexistent/keys"}, "--cluster-key-file /nonexistent/keys"),
    ],
)
async def test_bad_flags_fail_start_with_a_message_naming_the_flag(
    overrides: dict[str, object], complaint: str
) -> None:
    svc = GossipService(fast_config("a", **overrides), rng=random.Random(1))
    with pytest.raises(GossipConfigError) as info:
        await svc.start()
    assert complaint in str(info.value)
    await svc.stop()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("", "at least one key"), ("zz!\n", "neither hex nor base64"), ("00\n", "16..64 bytes")],
)
def test_a_bad_key_file_is_a_config_error(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(GossipConfigError, match=complaint):
        load_keyring(str(path))


def test_service_config_maps_the_node_config_flags() -> None:
    from p2preg.config import Config

    node = Config(
        gossip_listen="10.0.0.1:7946",
        join=("10.0.0.2:7946",),
        join_dns="p2preg.default.svc",
        mdns=True,
        mdns_interface=("10.0.0.1",),
        cluster_key_file="/etc/p2preg/keys",
        node_name="n1",
        zone="eu-1a",
        advertise=None,
    )
    cfg = GossipServiceConfig.from_node_config(node, http_addr="10.0.0.1:5000")
    assert cfg.gossip_listen == "10.0.0.1:7946"
    assert cfg.join == ("10.0.0.2:7946",)
    assert cfg.join_dns == ("p2preg.default.svc",)
    assert (cfg.mdns, cfg.mdns_interfaces) == (True, ("10.0.0.1",))
    assert (cfg.cluster_key_file, cfg.node_name, cfg.zone) == ("/etc/p2preg/keys", "n1", "eu-1a")
    assert cfg.advertise == "10.0.0.1:5000"
    assert cfg.tombstone_grace_s == node.tombstone_grace_s == 3600.0


async def test_members_api_of_a_service_not_started_answers_503_oci_json() -> None:
    import aiohttp
    from aiohttp import web

    from p2preg.gossip.http import members_app

    runner = web.AppRunner(members_app(GossipService(fast_config("idle"))))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/p2p/v1/members"
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 503
            body = await r.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await runner.cleanup()


async def test_the_members_api_lists_the_cluster_a_running_service_sees(
    start_service: ServiceFactory,
) -> None:
    from p2preg.gossip.http import members_document

    a = await start_service("a", seed=1, zone="z1")
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: _alive_names(a) == {"a", "b"})
    doc = members_document(a.node_name, a.members())
    assert [(m["name"], m["status"], m["zone"]) for m in doc["members"]] == [
        ("a", "alive", "z1"),
        ("b", "alive", ""),
    ]
    assert doc["members"][1]["address"] == gossip_address(b)


async def test_a_member_announced_with_a_host_name_is_never_resolved_or_sent_to(
    start_service: ServiceFactory,
) -> None:
    from p2preg.gossip.messages import Alive
    from p2preg.gossip.wire import assemble_packet

    a = await start_service("a", seed=1)
    alive = Alive(1, "sneaky", "resolve-me.invalid", 7946, "", "", {})
    packet = assemble_packet([(MessageType.ALIVE, alive.encode())], None)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=a.gossip_address
    )
    try:
        transport.sendto(packet)
        await until(lambda: "sneaky" in {m.name for m in a.members()})
        # Probing it is attempted (SWIM will suspect it) but no packet leaves for a host name.
        await until(lambda: a.stats()["driver"]["send_errors"] >= 1)
    finally:
        transport.close()
    assert a.stats()["driver"]["core_errors"] == 0
