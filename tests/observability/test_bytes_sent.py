"""Bytes served are counted once the response is sent, exactly, on both event loops.

Every test here runs under the stdlib loop (``FileResponse`` goes through native sendfile, which
bypasses aiohttp's byte counter) and under uvloop (aiohttp streams the file through its writer).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import aiohttp

from p2preg.registry.observability import Observability
from tests.observability.conftest import BLOB_SIZE
from tests.observability.tinyapp import DIGEST, AccessLines, StreamControl, TinyRegistry, serving

BLOB_ROUTE = "/v2/{name}/blobs/{digest}"
BLOB_PATH = f"/v2/library/busybox/blobs/{DIGEST}"


def served(obs: Observability, source: str) -> float | None:
    return obs.metrics.registry.get_sample_value(
        "p2preg_blob_bytes_served_total", {"source": source}
    )


def requests(obs: Observability, route: str, method: str, status: str) -> float | None:
    return obs.metrics.registry.get_sample_value(
        "p2preg_http_requests_total", {"route": route, "method": method, "status": status}
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a state change that has no event of its own (the server noticing a reset)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_small_response_counts_its_body_and_not_its_headers(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(f"{base}/v2/") as response,
    ):
        assert await response.read() == b"{}"
    (line,) = await access_lines.wait_for(1)
    assert line["bytes"] == 2
    assert "aborted" not in line


async def test_a_whole_blob_file_counts_every_byte_as_local(
    obs: Observability, blob_file: Path, blob_bytes: bytes, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH) as response,
    ):
        assert response.status == 200
        assert await response.read() == blob_bytes
    (line,) = await access_lines.wait_for(1)
    assert line["bytes"] == BLOB_SIZE
    assert served(obs, "local") == BLOB_SIZE
    assert served(obs, "upstream") == 0
    assert requests(obs, BLOB_ROUTE, "GET", "200") == 1


async def test_a_blob_sent_with_loop_sendfile_by_the_handler_counts_every_byte(
    obs: Observability, blob_file: Path, blob_bytes: bytes, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file, sendfile_by_hand=True).app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH) as response,
    ):
        assert await response.read() == blob_bytes
    (line,) = await access_lines.wait_for(1)
    assert line["bytes"] == BLOB_SIZE
    assert served(obs, "local") == BLOB_SIZE


async def test_a_range_request_counts_only_the_range(
    obs: Observability, blob_file: Path, blob_bytes: bytes, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base, aiohttp.ClientSession() as client:
        headers = {"Range": "bytes=100-1099"}
        async with client.get(base + BLOB_PATH, headers=headers) as response:
            assert response.status == 206
            assert await response.read() == blob_bytes[100:1100]
        headers = {"Range": f"bytes=-{BLOB_SIZE - 10}"}
        async with client.get(base + BLOB_PATH, headers=headers) as response:
            assert response.status == 206
            assert await response.read() == blob_bytes[10:]
    first, second = await access_lines.wait_for(2)
    assert (first["status"], first["bytes"]) == (206, 1000)
    assert (second["status"], second["bytes"]) == (206, BLOB_SIZE - 10)
    assert served(obs, "local") == 1000 + BLOB_SIZE - 10
    assert requests(obs, BLOB_ROUTE, "GET", "206") == 2


async def test_a_head_request_counts_no_bytes(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    registry = TinyRegistry(blob_file)
    app = registry.app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.head(base + BLOB_PATH) as response,
    ):
        assert response.status == 200
        assert response.content_length == BLOB_SIZE
    (line,) = await access_lines.wait_for(1)
    assert line["bytes"] == 0
    assert served(obs, "local") == 0
    assert requests(obs, BLOB_ROUTE, "HEAD", "200") == 1


async def test_a_complete_streamed_blob_counts_every_byte(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    rng = random.Random(5)
    control = StreamControl(first=rng.randbytes(70_000), rest=rng.randbytes(130_000))
    control.resume.set()
    app = TinyRegistry(blob_file, source="upstream", stream=control).app(obs=obs)
    async with (
        serving(app) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH) as response,
    ):
        assert await response.read() == control.first + control.rest
    (line,) = await access_lines.wait_for(1)
    assert line["bytes"] == 200_000
    assert served(obs, "upstream") == 200_000


async def test_a_stream_aborted_by_the_client_counts_what_was_written_before(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    rng = random.Random(6)
    control = StreamControl(first=rng.randbytes(65_536), rest=rng.randbytes(1_000_000))
    app = TinyRegistry(blob_file, source="upstream", stream=control).app(obs=obs)
    async with serving(app) as base:
        host, port = base.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {BLOB_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await control.first_sent.wait()
        writer.transport.abort()  # unread bytes pending: the kernel sends a reset
        assert control.request is not None
        request = control.request
        await until(lambda: request.transport is None or request.transport.is_closing())
        control.resume.set()
        await control.finished.wait()
        assert isinstance(control.error, ConnectionError)
        (line,) = await access_lines.wait_for(1)
    assert line["status"] == 499  # the client left: nginx's "client closed request", not a 200
    assert line["bytes"] == 65_536
    assert line["aborted"] is True
    assert line["source"] == "upstream"
    assert served(obs, "upstream") == 65_536
    assert requests(obs, BLOB_ROUTE, "GET", "499") == 1
    assert requests(obs, BLOB_ROUTE, "GET", "200") is None
    assert len(access_lines.records) == 1


async def test_a_file_aborted_by_the_client_is_recorded_once_and_never_overcounted(
    obs: Observability, blob_file: Path, access_lines: AccessLines
) -> None:
    app = TinyRegistry(blob_file).app(obs=obs)
    async with serving(app) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {BLOB_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await reader.readexactly(4096)
        writer.transport.abort()
        (line,) = await access_lines.wait_for(1)
    assert 0 <= int(line["bytes"]) <= BLOB_SIZE  # type: ignore[call-overload]
    aborted = line["bytes"] != BLOB_SIZE
    assert line.get("aborted", False) is aborted
    status = "499" if aborted else "200"
    assert line["status"] == int(status)
    assert served(obs, "local") == line["bytes"]
    assert requests(obs, BLOB_ROUTE, "GET", status) == 1
