"""RegistryMetrics: bounded labels, per-node registries, store gauges read at scrape time."""

from __future__ import annotations

from prometheus_client import REGISTRY

from p2preg.registry.metrics import RegistryMetrics, exposition


def sample(metrics: RegistryMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_node_has_its_own_registry_and_never_touches_the_global_one() -> None:
    first, second = RegistryMetrics(), RegistryMetrics()
    first.request_finished("/v2/", "GET", 200, 0.01)
    assert (
        sample(first, "p2preg_http_requests_total", route="/v2/", method="GET", status="200") == 1
    )
    assert (
        sample(second, "p2preg_http_requests_total", route="/v2/", method="GET", status="200")
        is None
    )
    assert (
        REGISTRY.get_sample_value(
            "p2preg_http_requests_total", {"route": "/v2/", "method": "GET", "status": "200"}
        )
        is None
    )


def test_request_duration_lands_in_the_histogram() -> None:
    metrics = RegistryMetrics()
    metrics.request_finished("/v2/", "GET", 200, 0.003)
    metrics.request_finished("/v2/", "GET", 401, 2.0)
    labels = {"route": "/v2/", "method": "GET"}
    assert sample(metrics, "p2preg_http_request_duration_seconds_count", **labels) == 2
    assert sample(metrics, "p2preg_http_request_duration_seconds_bucket", le="0.005", **labels) == 1
    assert sample(metrics, "p2preg_http_request_duration_seconds_bucket", le="2.5", **labels) == 2


def test_unexpected_methods_and_sources_fold_into_bounded_labels() -> None:
    metrics = RegistryMetrics()
    metrics.request_finished("other", "BREW", 405, 0.0)
    metrics.blob_bytes_served("somewhere-else", 10)
    assert (
        sample(metrics, "p2preg_http_requests_total", route="other", method="OTHER", status="405")
        == 1
    )
    assert sample(metrics, "p2preg_blob_bytes_served_total", source="other") == 10


def test_blob_sources_start_at_zero_and_add_up() -> None:
    metrics = RegistryMetrics()
    assert sample(metrics, "p2preg_blob_bytes_served_total", source="peer") == 0
    metrics.blob_bytes_served("peer", 100)
    metrics.blob_bytes_served("peer", 23)
    metrics.blob_bytes_served("local", 0)
    assert sample(metrics, "p2preg_blob_bytes_served_total", source="peer") == 123
    assert sample(metrics, "p2preg_blob_bytes_served_total", source="local") == 0


def test_upstream_requests_are_counted_by_registry_kind_and_status() -> None:
    metrics = RegistryMetrics()
    metrics.upstream_request("docker.io", "manifest", 200)
    metrics.upstream_request("docker.io", "manifest", 200)
    metrics.upstream_request("ghcr.io", "blob", "error")
    metrics.upstream_request("ghcr.io", "token", 999)
    assert (
        sample(
            metrics,
            "p2preg_upstream_requests_total",
            registry="docker.io",
            kind="manifest",
            status="200",
        )
        == 2
    )
    assert (
        sample(
            metrics,
            "p2preg_upstream_requests_total",
            registry="ghcr.io",
            kind="blob",
            status="error",
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "p2preg_upstream_requests_total",
            registry="ghcr.io",
            kind="token",
            status="error",
        )
        == 1
    )


def test_cache_hits_and_misses_are_counted_separately() -> None:
    metrics = RegistryMetrics()
    for hit in (True, True, True, False):
        metrics.cache(hit)
    assert sample(metrics, "p2preg_cache_requests_total", result="hit") == 3
    assert sample(metrics, "p2preg_cache_requests_total", result="miss") == 1


def test_store_gauges_are_read_through_the_node_callbacks_at_scrape_time() -> None:
    metrics = RegistryMetrics()
    assert sample(metrics, "p2preg_store_bytes") is None
    totals = {"bytes": 1000, "blobs": 3}
    metrics.set_store_readings(
        bytes_reading=lambda: totals["bytes"], blobs_reading=lambda: totals["blobs"]
    )
    assert sample(metrics, "p2preg_store_bytes") == 1000
    totals.update(bytes=5000, blobs=4)
    assert sample(metrics, "p2preg_store_bytes") == 5000
    assert sample(metrics, "p2preg_store_blobs") == 4


def test_a_failing_store_callback_drops_its_gauge_but_not_the_scrape() -> None:
    metrics = RegistryMetrics()

    def broken() -> int:
        raise OSError("disk gone")

    metrics.set_store_readings(bytes_reading=broken, blobs_reading=lambda: 7)
    body, _ = exposition(metrics, None)
    assert b"p2preg_store_bytes " not in body
    assert b"p2preg_store_blobs 7.0" in body


def test_exposition_is_text_by_default_and_openmetrics_on_request() -> None:
    metrics = RegistryMetrics()
    metrics.cache(True)
    body, content_type = exposition(metrics, None)
    assert content_type.startswith("text/plain")
    assert b'p2preg_cache_requests_total{result="hit"} 1.0' in body
    body, content_type = exposition(metrics, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
