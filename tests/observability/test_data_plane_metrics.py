"""The data-plane counters: names, labels, folding of unknown sources, and the route prefix the
observability layer uses to recognise peer uploads (it must not import ``p2p``, so a test pins the
two constants together). The lab tests (``tests/lab/``) check them on real nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
from aiohttp import web

from p2preg.p2p.source import BLOBS_PATH
from p2preg.registry.metrics import RegistryMetrics, exposition
from p2preg.registry.observability import PEER_BLOBS_ROUTE_PREFIX, Observability
from tests.observability.tinyapp import (
    DIGEST,
    AccessLines,
    TinyRegistry,
    capture_access_lines,
    serving,
)
from tests.support.node import parse_metrics


def _values(metrics: RegistryMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = exposition(metrics, None)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for s in parse_metrics(body.decode())}  # fmt: skip


def test_the_peer_upload_prefix_is_the_peer_blob_path() -> None:
    assert PEER_BLOBS_ROUTE_PREFIX == BLOBS_PATH


def test_sent_and_received_bytes_add_up_by_source() -> None:
    metrics = RegistryMetrics()
    metrics.peer_bytes_sent(1000)
    metrics.peer_bytes_sent(0)
    metrics.fill_bytes_received("peer", 700)
    metrics.fill_bytes_received("upstream", 300)
    metrics.fill_bytes_received("peer", 5)
    metrics.fill_bytes_received("somewhere", 9)  # an unknown kind never becomes a label value

    values = _values(metrics)

    assert values[("p2preg_p2p_sent_bytes_total", ())] == 1000
    received = "p2preg_fill_received_bytes_total"
    assert values[(received, (("source", "peer"),))] == 705
    assert values[(received, (("source", "upstream"),))] == 300
    assert values[(received, (("source", "other"),))] == 9
    assert {k[1] for k in values if k[0] == received} == {
        (("source", "peer"),), (("source", "upstream"),), (("source", "other"),)}


def test_both_counters_are_exported_at_zero_before_any_transfer() -> None:
    values = _values(RegistryMetrics())
    assert values[("p2preg_p2p_sent_bytes_total", ())] == 0
    assert values[("p2preg_fill_received_bytes_total", (("source", "peer"),))] == 0
    assert values[("p2preg_fill_received_bytes_total", (("source", "upstream"),))] == 0


async def test_a_node_counts_blob_bytes_sent_to_peers_but_not_refusals(
    obs: Observability, blob_file: Path, blob_bytes: bytes, access_lines: AccessLines
) -> None:
    tiny = TinyRegistry(blob_file)

    async def peer_blob(request: web.Request) -> web.StreamResponse:
        if request.match_info["digest"] != DIGEST:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return await tiny.blob(request)

    app = tiny.app(obs=obs)
    app.router.add_get(BLOBS_PATH + "{digest}", peer_blob)
    with capture_access_lines(logging.DEBUG) as every_line:
        async with serving(app) as base, aiohttp.ClientSession() as client:
            async with client.get(f"{base}{BLOBS_PATH}{DIGEST}") as response:
                assert await response.read() == blob_bytes
            async with client.get(f"{base}{BLOBS_PATH}sha256:{'cd' * 32}") as response:
                assert response.status == 404
                assert await response.read()
            async with client.get(f"{base}/v2/library/busybox/blobs/{DIGEST}") as response:
                assert await response.read() == blob_bytes  # a client's GET: no peer upload
        await every_line.wait_for(3)
    # The refused peer request is logged at DEBUG only (the swarm's chatter); the rest at INFO.
    assert [(r["status"], level) for r, level in zip(every_line.records, every_line.levels,
                                                     strict=True)] == [
        (200, logging.INFO), (404, logging.DEBUG), (200, logging.INFO)]
    assert [r["status"] for r in await access_lines.wait_for(2)] == [200, 200]
    sent = obs.metrics.registry.get_sample_value("p2preg_p2p_sent_bytes_total")
    assert sent == len(blob_bytes)
