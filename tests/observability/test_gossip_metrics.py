"""The ``p2preg_gossip_*`` families: the collector over a fixed stats dict, and real nodes.

The collector reads a plain dict at scrape time (``GossipService.stats``); labels are fixed sets,
drop reasons are checked and bounded, a failing reading never breaks a scrape. End to end: a
registry-mode ``Node`` with gossip, joined by a second one on 127.0.0.1, scraped over HTTP.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.gossip.service import GossipService
from p2preg.node import Node
from p2preg.registry.metrics import MAX_DROP_REASONS, RegistryMetrics, exposition
from tests.support.cluster import DEADLINE_S, until
from tests.support.gossip import gossip_address, gossip_services
from tests.support.node import MetricSample, parse_metrics

STATS: dict[str, Any] = {
    "packets_sent": 120,
    "packets_received": 115,
    "bytes_sent": 48_000,
    "bytes_received": 46_500,
    "probes": 40,
    "indirect_probes": 6,
    "failed_probes": 2,
    "push_pulls": 3,
    "drops": {"oversized": 1, "unauthenticated": 4, "malformed": 0},
    "driver": {
        "datagrams_sent": 120,
        "send_errors": 5,
        "streams_accepted": 2,
        "streams_refused": 1,
        "streams_opened": 3,
        "streams_completed": 4,
        "stream_failures": 6,
        "stream_timeouts": 7,
        "core_errors": 0,
    },
    "seeds_joined": 2,
    "live_members": 4,
    "members": {"alive": 3, "suspect": 1, "dead": 2, "left": 1},
    "joins": 7,
    "suspicions": 9,
    "suspicions_refuted": 6,
    "deaths": 2,
    "leaves": 1,
    "refutations": 3,
    "awareness_score": 1,
    "catalog_entries": 512,
}


def scrape(metrics: RegistryMetrics) -> str:
    return exposition(metrics, None)[0].decode()


def gossip_samples(text: str) -> list[MetricSample]:
    return [s for s in parse_metrics(text) if s.name.startswith("p2preg_gossip_")]


def value(samples: list[MetricSample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def with_gossip(stats: dict[str, Any]) -> RegistryMetrics:
    metrics = RegistryMetrics()
    metrics.set_gossip_reading(lambda: stats)
    return metrics


# --- the collector over a fixed dict -------------------------------------------------------------


def test_every_gossip_family_is_read_from_the_stats_dict() -> None:
    samples = gossip_samples(scrape(with_gossip(STATS)))
    assert value(samples, "p2preg_gossip_members", status="alive") == 3
    assert value(samples, "p2preg_gossip_members", status="suspect") == 1
    assert value(samples, "p2preg_gossip_members", status="dead") == 2
    assert value(samples, "p2preg_gossip_members", status="left") == 1
    assert value(samples, "p2preg_gossip_packets_total", direction="sent") == 120
    assert value(samples, "p2preg_gossip_packets_total", direction="received") == 115
    assert value(samples, "p2preg_gossip_bytes_total", direction="sent") == 48_000
    assert value(samples, "p2preg_gossip_bytes_total", direction="received") == 46_500
    assert value(samples, "p2preg_gossip_dropped_packets_total", reason="unauthenticated") == 4
    assert value(samples, "p2preg_gossip_dropped_packets_total", reason="oversized") == 1
    assert value(samples, "p2preg_gossip_dropped_packets_total", reason="malformed") == 0
    assert value(samples, "p2preg_gossip_probes_total") == 40
    assert value(samples, "p2preg_gossip_indirect_probes_total") == 6
    assert value(samples, "p2preg_gossip_failed_probes_total") == 2
    assert value(samples, "p2preg_gossip_push_pulls_total") == 3
    assert value(samples, "p2preg_gossip_member_joins_total") == 7
    assert value(samples, "p2preg_gossip_suspicions_total") == 9
    assert value(samples, "p2preg_gossip_suspicions_refuted_total") == 6
    assert value(samples, "p2preg_gossip_member_deaths_total") == 2
    assert value(samples, "p2preg_gossip_member_leaves_total") == 1
    assert value(samples, "p2preg_gossip_refutations_total") == 3
    assert value(samples, "p2preg_gossip_seeds_joined_total") == 2
    assert value(samples, "p2preg_gossip_send_errors_total") == 5
    assert value(samples, "p2preg_gossip_internal_errors_total") == 0
    assert value(samples, "p2preg_gossip_streams_total", direction="outbound") == 3
    assert value(samples, "p2preg_gossip_streams_total", direction="inbound") == 2
    assert value(samples, "p2preg_gossip_stream_errors_total", reason="failed") == 6
    assert value(samples, "p2preg_gossip_stream_errors_total", reason="timeout") == 7
    assert value(samples, "p2preg_gossip_stream_errors_total", reason="refused") == 1
    assert value(samples, "p2preg_gossip_awareness_score") == 1
    assert value(samples, "p2preg_gossip_catalog_entries") == 512


def test_values_are_read_at_scrape_time_not_when_the_reading_is_set() -> None:
    stats = {"packets_sent": 1, "packets_received": 0}
    metrics = with_gossip(stats)
    assert value(gossip_samples(scrape(metrics)), "p2preg_gossip_packets_total",
                 direction="sent") == 1  # fmt: skip
    stats["packets_sent"] = 9
    assert value(gossip_samples(scrape(metrics)), "p2preg_gossip_packets_total",
                 direction="sent") == 9  # fmt: skip


def test_a_registry_without_a_gossip_reading_exports_no_gossip_family() -> None:
    metrics = RegistryMetrics()
    assert gossip_samples(scrape(metrics)) == []
    metrics.set_gossip_reading(lambda: STATS)
    assert gossip_samples(scrape(metrics)) != []
    metrics.set_gossip_reading(None)
    assert gossip_samples(scrape(metrics)) == []


def test_a_failing_reading_drops_the_gossip_families_but_not_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("gossip not running")

    metrics = RegistryMetrics()
    metrics.set_gossip_reading(broken)
    text = scrape(metrics)
    assert gossip_samples(text) == []
    assert "p2preg_cache_requests_total" in text
    assert "gossip metrics callback failed" in caplog.text


def test_missing_or_non_numeric_keys_leave_out_only_their_family() -> None:
    stats = {"probes": 4, "push_pulls": "many", "members": {"alive": 2}, "awareness_score": None}
    names = {s.name for s in gossip_samples(scrape(with_gossip(stats)))}
    assert names == {"p2preg_gossip_probes_total", "p2preg_gossip_members"}
    samples = gossip_samples(scrape(with_gossip(stats)))
    assert value(samples, "p2preg_gossip_members", status="suspect") == 0


def test_drop_reasons_outside_a_short_lowercase_word_fold_into_other() -> None:
    drops = {'evil"}\nlabel': 2, "Unknown Type": 3, "truncated": 1, 7: 1}
    samples = gossip_samples(scrape(with_gossip({"drops": drops})))
    reasons = {s.labels["reason"]: s.value for s in samples}
    assert reasons == {"other": 6, "truncated": 1}


def test_the_number_of_drop_reasons_is_capped() -> None:
    drops = {f"reason_{i}": 1 for i in range(MAX_DROP_REASONS * 4)}
    samples = gossip_samples(scrape(with_gossip({"drops": drops})))
    assert len(samples) == MAX_DROP_REASONS
    assert sum(s.value for s in samples) == MAX_DROP_REASONS * 4
    assert value(samples, "p2preg_gossip_dropped_packets_total", reason="other") == (
        MAX_DROP_REASONS * 4 - (MAX_DROP_REASONS - 1)
    )


# --- real nodes -------------------------------------------------------------------------------


def node_config(tmp_path: Path, name: str, join: tuple[str, ...] = (), **gossip: Any) -> Config:
    return Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path / name),
                  node_name=name, join=join, **gossip)  # fmt: skip


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Two registry nodes with gossip on 127.0.0.1, the second joined through the first."""
    nodes: list[Node] = []
    try:
        first = Node(node_config(tmp_path, "alpha", gossip_listen="127.0.0.1:0"))
        await first.start()
        nodes.append(first)
        host, port = first.gossip.bound_address[:2]
        second = Node(node_config(tmp_path, "beta", (f"{host}:{port}",),
                                  gossip_listen="127.0.0.1:0"))  # fmt: skip
        await second.start()
        nodes.append(second)
        yield first, second
    finally:
        for node in reversed(nodes):
            await node.stop()


async def scrape_node(http: aiohttp.ClientSession, node: Node) -> list[MetricSample]:
    async with http.get(node.url + "/metrics") as response:
        assert response.status == 200
        return gossip_samples(await response.text())


async def test_a_node_with_gossip_exports_membership_and_traffic_that_move(
    pair: tuple[Node, Node],
) -> None:
    first, second = pair
    async with aiohttp.ClientSession() as http:
        samples: list[MetricSample] = []

        async def refresh() -> None:
            nonlocal samples
            samples = await scrape_node(http, first)

        async def wait_for(check: Callable[[], bool]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE_S
            await refresh()
            while not check():
                assert loop.time() < deadline, samples
                await asyncio.sleep(0.05)
                await refresh()

        await wait_for(lambda: value(samples, "p2preg_gossip_members", status="alive") == 2
                       and value(samples, "p2preg_gossip_probes_total") > 0)  # fmt: skip
        assert value(samples, "p2preg_gossip_packets_total", direction="sent") > 0
        assert value(samples, "p2preg_gossip_bytes_total", direction="sent") > 0
        assert value(samples, "p2preg_gossip_member_joins_total") >= 1
        assert value(samples, "p2preg_gossip_awareness_score") >= 0
        assert value(samples, "p2preg_gossip_catalog_entries") == 0
        assert value(samples, "p2preg_gossip_dropped_packets_total", reason="new_version") == 0
        sent_before = value(samples, "p2preg_gossip_packets_total", direction="sent")

        # Traffic keeps moving: the first node probes the second about once a second.
        await wait_for(lambda: value(samples, "p2preg_gossip_packets_total",
                                     direction="received") > 0
                       and value(samples, "p2preg_gossip_packets_total",
                                 direction="sent") > sent_before)  # fmt: skip

        # A digest the second node holds becomes a catalog entry on the first.
        second.gossip.advertise_have("sha256:" + "ab" * 32)
        await wait_for(lambda: value(samples, "p2preg_gossip_catalog_entries") == 1)

        # A datagram in no protocol version we speak is dropped and counted by reason.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"\xff" * 16, first.gossip.gossip_address)
        await wait_for(lambda: value(samples, "p2preg_gossip_dropped_packets_total",
                                     reason="new_version") == 1)  # fmt: skip

    # The joining node counted its seed.
    async with aiohttp.ClientSession() as http:
        assert value(await scrape_node(http, second), "p2preg_gossip_seeds_joined_total") == 1


async def test_a_node_without_gossip_exports_no_gossip_family(tmp_path: Path) -> None:
    node = Node(node_config(tmp_path, "solo"))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as response:
            text = await response.text()
        assert "p2preg_store_blobs" in text
        assert "p2preg_gossip_" not in text
    finally:
        await node.stop()


# --- membership transitions counted by the service -----------------------------------------------

#: Slower probes than ``FAST``: a false suspicion would still need a 150 ms stall of the loop.
STEADY = {"probe_interval_s": 0.2, "probe_timeout_s": 0.15}


@pytest.fixture
async def services() -> AsyncIterator[tuple[GossipService, GossipService]]:
    """Two bare gossip services with short intervals, the second joined through the first."""
    async with gossip_services() as start:
        first = await start("a", 1, **STEADY)
        second = await start("b", 2, (gossip_address(first),), **STEADY)
        await until(lambda: first.stats()["members"]["alive"] == 2)
        yield first, second


async def test_a_peer_that_vanishes_counts_as_failed_probes_a_suspicion_and_a_death(
    services: tuple[GossipService, GossipService],
) -> None:
    first, second = services
    before = first.stats()
    await second.stop(leave=False)
    await until(lambda: first.stats()["members"]["dead"] == 1)
    after = first.stats()
    assert after["members"] == {"alive": 1, "suspect": 0, "dead": 1, "left": 0}
    assert after["failed_probes"] > before["failed_probes"]
    assert after["suspicions"] >= 1
    assert after["deaths"] == before["deaths"] + 1
    assert after["leaves"] == 0
    assert after["awareness_score"] >= 1  # missed probes raise it (Lifeguard)


async def test_a_peer_that_leaves_counts_as_a_leave_not_a_death(
    services: tuple[GossipService, GossipService],
) -> None:
    first, second = services
    before = first.stats()
    await second.stop(leave=True)
    await until(lambda: first.stats()["members"]["left"] == 1)
    after = first.stats()
    assert after["members"] == {"alive": 1, "suspect": 0, "dead": 0, "left": 1}
    assert after["leaves"] == 1
    assert after["deaths"] == before["deaths"]
