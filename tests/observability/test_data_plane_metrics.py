"""The data-plane counters: names, labels, folding of unknown sources, and the route prefix the
observability layer uses to recognise peer uploads (it must not import ``p2p``, so a test pins the
two constants together). The lab tests (``tests/lab/``) check them on real nodes."""

from __future__ import annotations

from p2preg.p2p.source import BLOBS_PATH
from p2preg.registry.metrics import RegistryMetrics, exposition
from p2preg.registry.observability import PEER_BLOBS_ROUTE_PREFIX
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
