"""GET /metrics and GET /healthz on a live app, and request counting by route pattern."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from p2preg.registry.observability import Observability
from tests.observability.tinyapp import DIGEST, AccessLines, TinyRegistry, serving


def requests(obs: Observability, route: str, method: str, status: str) -> float | None:
    return obs.metrics.registry.get_sample_value(
        "p2preg_http_requests_total", {"route": route, "method": method, "status": status}
    )


async def test_requests_are_counted_by_route_pattern_not_by_path(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        for name in ("a", "b/c", "d/e/f"):
            async with client.put(f"{base}/v2/{name}/manifests/v1", data=b"{}") as response:
                assert response.status == 201
        async with client.post(f"{base}/v2/a/blobs/uploads/") as response:
            assert response.status == 202
    await access_lines.wait_for(4)
    assert requests(obs, "/v2/{name}/manifests/{ref}", "PUT", "201") == 3
    assert requests(obs, "/v2/{name}/blobs/uploads/", "POST", "202") == 1
    histogram_count = obs.metrics.registry.get_sample_value(
        "p2preg_http_request_duration_seconds_count",
        {"route": "/v2/{name}/manifests/{ref}", "method": "PUT"},
    )
    assert histogram_count == 3


async def test_unknown_paths_and_methods_count_as_route_other(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        for path in ("/nope", "/v2/x/unknown/1", "/wp-admin/login.php"):
            async with client.get(base + path) as response:
                assert response.status == 404
        async with client.patch(f"{base}/v2/x/blobs/{DIGEST}") as response:
            assert response.status == 405
    await access_lines.wait_for(4)
    assert requests(obs, "other", "GET", "404") == 3
    assert requests(obs, "other", "PATCH", "405") == 1


async def test_metrics_endpoint_serves_the_text_exposition(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    obs.metrics.set_store_readings(bytes_reading=lambda: 4096, blobs_reading=lambda: 2)
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v2/") as response:
            assert response.status == 200
        await access_lines.wait_for(1)
        async with client.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
    assert 'p2preg_http_requests_total{method="GET",route="/v2/",status="200"} 1.0' in text
    assert "p2preg_store_bytes 4096.0" in text
    assert "p2preg_store_blobs 2.0" in text
    assert 'p2preg_blob_bytes_served_total{source="local"} 0.0' in text


async def test_healthz_is_ok_by_default(obs: Observability, blob_file: Path) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(f"{base}/healthz") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.json() == {"status": "ok"}


async def test_healthz_reports_every_failing_readiness_check(
    obs: Observability, blob_file: Path
) -> None:
    state = {"store": "ok"}

    def broken() -> str | None:
        raise RuntimeError("boom")

    obs.health.add_check("store", lambda: None if state["store"] == "ok" else "store read-only")
    obs.health.add_check("gossip", broken)
    obs.health.set_unready("draining")
    state["store"] = "bad"
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 503
            assert await response.json() == {
                "status": "unavailable",
                "reasons": {
                    "node": "draining",
                    "store": "store read-only",
                    "gossip": "check failed",
                },
            }
        obs.health.set_ready()
        state["store"] = "ok"
        obs.health.add_check("gossip", lambda: None)
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
