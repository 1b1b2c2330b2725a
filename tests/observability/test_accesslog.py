"""One JSON access line per request, with the facts handlers recorded and no secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
from aiohttp import web

from p2preg.registry.accesslog import AccessRecord, format_record
from p2preg.registry.observability import Observability
from p2preg.registry.requestkeys import PEER_KEY, SOURCE_KEY, UPSTREAM_KEY
from tests.observability.tinyapp import DIGEST, AccessLines, TinyRegistry, serving

BLOB_PATH = f"/v2/library/busybox/blobs/{DIGEST}"


async def test_a_blob_get_logs_one_exact_json_line(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        headers = {"Range": "bytes=0-9", "User-Agent": "containerd/1.6.20"}
        async with client.get(base + BLOB_PATH, headers=headers) as response:
            await response.read()
    (line,) = await access_lines.wait_for(1)
    duration_ms = line.pop("duration_ms")
    assert isinstance(duration_ms, float) and duration_ms >= 0
    assert line == {
        "ts": "2026-01-01T00:00:00.000Z",
        "remote": "127.0.0.1",
        "method": "GET",
        "path": BLOB_PATH,
        "route": "/v2/{name}/blobs/{digest}",
        "status": 206,
        "bytes": 10,
        "user": None,
        "source": "local",
        "digest": DIGEST,
        "user_agent": "containerd/1.6.20",
    }
    (message,) = access_lines.messages
    assert "\n" not in message
    assert json.loads(message)["digest"] == DIGEST


async def test_query_strings_and_credentials_never_reach_the_log(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        url = f"{base}{BLOB_PATH}?ns=docker.io&token=s3cr3t-token&_state=s3cr3t-state"
        headers = {"Authorization": "Basic YWxpY2U6czNjcjN0LXBhc3N3b3Jk"}
        async with client.head(url, headers=headers) as response:
            assert response.status == 200
    (line,) = await access_lines.wait_for(1)
    assert line["path"] == BLOB_PATH
    assert line["ns"] == "docker.io"
    (message,) = access_lines.messages
    assert "s3cr3t" not in message
    assert "YWxpY2U6" not in message


async def test_mirror_and_peer_facts_set_by_handlers_are_logged(
    obs: Observability, access_lines: AccessLines
) -> None:
    async def from_peer(request: web.Request) -> web.Response:
        request[SOURCE_KEY] = "peer"
        request[PEER_KEY] = "node-7"
        request[UPSTREAM_KEY] = "docker.io"
        return web.Response(body=b"12345")

    app = web.Application(middlewares=[obs.middleware])
    obs.setup(app)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", from_peer)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH) as response,
    ):
        assert await response.read() == b"12345"
    (line,) = await access_lines.wait_for(1)
    assert (line["source"], line["peer"], line["upstream"], line["bytes"]) == (
        "peer",
        "node-7",
        "docker.io",
        5,
    )
    served = obs.metrics.registry.get_sample_value(
        "p2preg_blob_bytes_served_total", {"source": "peer"}
    )
    assert served == 5


async def test_a_failing_handler_is_logged_once_as_500(
    obs: Observability, access_lines: AccessLines
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application(middlewares=[obs.middleware])
    obs.setup(app)
    app.router.add_get("/v2/", broken)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v2/") as response:
            assert response.status == 500
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 200
    first, second = await access_lines.wait_for(2)
    assert (first["status"], first["route"]) == (500, "/v2/")
    assert second["route"] == "/healthz"
    count = obs.metrics.registry.get_sample_value(
        "p2preg_http_requests_total", {"route": "/v2/", "method": "GET", "status": "500"}
    )
    assert count == 1


async def test_without_the_middleware_lines_are_still_written_with_exact_byte_counts(
    blob_file: Path, blob_bytes: bytes, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app()
    async with serving(app) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v2/") as response:
            assert await response.read() == b"{}"
        async with client.get(base + BLOB_PATH, headers={"Range": "bytes=5-"}) as response:
            assert await response.read() == blob_bytes[5:]
    first, second = await access_lines.wait_for(2)
    assert first["bytes"] == 2
    assert second["bytes"] == len(blob_bytes) - 5


def test_a_record_is_one_line_of_escaped_json() -> None:
    record = AccessRecord(
        ts=0.0,
        remote="::1",
        method="GET",
        path='/v2/x\n{"evil": 1}\u2028/tags/list',
        route="other",
        status=404,
        bytes=0,
        duration_ms=1.23456,
        user="bob",
        aborted=True,
    )
    text = format_record(record)
    assert "\n" not in text and "\u2028" not in text
    assert json.loads(text) == {
        "ts": "1970-01-01T00:00:00.000Z",
        "remote": "::1",
        "method": "GET",
        "path": '/v2/x\n{"evil": 1}\u2028/tags/list',
        "route": "other",
        "status": 404,
        "bytes": 0,
        "duration_ms": 1.235,
        "user": "bob",
        "aborted": True,
    }


def test_only_refused_peer_blob_requests_are_logged_at_debug() -> None:
    from p2preg.registry.observability import PEER_BLOBS_ROUTE_PREFIX, access_level

    piece = PEER_BLOBS_ROUTE_PREFIX + "{digest}"
    assert access_level(piece, 503) == logging.DEBUG
    assert access_level(piece, 404) == logging.DEBUG
    assert access_level(piece, 206) == logging.INFO
    assert access_level(piece, 200) == logging.INFO
    assert access_level(piece, 500) == logging.INFO
    assert access_level("/v2/{name}/blobs/{digest}", 404) == logging.INFO
