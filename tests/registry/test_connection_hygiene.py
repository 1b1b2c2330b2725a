"""The connection layer: the header read deadline (slowloris), client faults off the server's books.

Real aiohttp servers on 127.0.0.1 served by ``RegistryRunner``; raw sockets play the clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from p2preg.registry.observability import Observability
from tests.registry.conftest import RegistryFactory, RegistryNode
from tests.registry.helpers import digest_of

TRICKLERS = 200
HEADER_TIMEOUT_S = 0.5


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def _address(node: RegistryNode) -> tuple[str, int]:
    host, port = node.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _requests(obs: Observability, route: str, method: str, status: str) -> float | None:
    return obs.metrics.registry.get_sample_value(
        "p2preg_http_requests_total", {"route": route, "method": method, "status": status}
    )


async def _trickle(node: RegistryNode, stop: asyncio.Event) -> bytes:
    """Send a request head one header line at a time, forever; return what the server sent."""
    reader, writer = await asyncio.open_connection(*_address(node))
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
    received = b""
    try:
        while not stop.is_set():
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:
                break  # the server closed the connection
            received += chunk
    finally:
        writer.close()
    return received


async def test_trickling_request_heads_are_dropped_while_normal_requests_are_served(
    registry_factory: RegistryFactory,
) -> None:
    node = await registry_factory(header_timeout_s=HEADER_TIMEOUT_S)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    tricklers = [asyncio.create_task(_trickle(node, stop)) for _ in range(TRICKLERS)]
    try:
        # While all of them trickle, an ordinary client is served at once.
        response = await node.request("GET", "/v2/")
        assert response.status == 200
        async with asyncio.timeout(HEADER_TIMEOUT_S * 20):
            received = await asyncio.gather(*tricklers)
    finally:
        stop.set()
        await asyncio.gather(*tricklers, return_exceptions=True)
    elapsed = loop.time() - started
    assert received == [b""] * TRICKLERS  # every one dropped, none answered
    assert elapsed >= HEADER_TIMEOUT_S  # not before the deadline
    response = await node.request("GET", "/v2/")
    assert response.status == 200


async def test_a_connection_that_sends_nothing_is_closed_after_the_deadline(
    registry_factory: RegistryFactory,
) -> None:
    node = await registry_factory(header_timeout_s=HEADER_TIMEOUT_S)
    reader, writer = await asyncio.open_connection(*_address(node))
    async with asyncio.timeout(HEADER_TIMEOUT_S * 20):
        assert await reader.read() == b""
    writer.close()


async def test_a_slow_body_is_not_cut_by_the_header_deadline(
    registry_factory: RegistryFactory,
) -> None:
    """Only the request head is bounded: an upload may take as long as it takes."""
    node = await registry_factory(header_timeout_s=HEADER_TIMEOUT_S)
    data = bytes(range(256)) * 4
    digest = digest_of(data)
    reader, writer = await asyncio.open_connection(*_address(node))
    writer.write(
        f"POST /v2/lib/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
    )
    for part in range(4):
        writer.write(data[part * 256 : (part + 1) * 256])
        await writer.drain()
        await asyncio.sleep(HEADER_TIMEOUT_S)  # the body spans 4 deadlines on purpose
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 201"), status_line
    assert (await node.request("GET", f"/v2/lib/app/blobs/{digest}")).body == data


async def test_a_keep_alive_connection_survives_the_deadline_between_requests(
    registry_factory: RegistryFactory,
) -> None:
    node = await registry_factory(header_timeout_s=HEADER_TIMEOUT_S)
    reader, writer = await asyncio.open_connection(*_address(node))
    for _ in range(2):
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"{}"), 10)
        await asyncio.sleep(HEADER_TIMEOUT_S * 2)  # idle: the keep-alive timeout's business
    writer.close()


async def test_a_partial_head_pipelined_behind_a_request_is_closed_by_the_keepalive_timeout(
    registry_factory: RegistryFactory,
) -> None:
    """The one head the header deadline cannot see (it arrives with a complete request)."""
    node = await registry_factory(header_timeout_s=HEADER_TIMEOUT_S, keepalive_timeout_s=1.0)
    reader, writer = await asyncio.open_connection(*_address(node))
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nX-Slow: 1\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()  # the first answer, then EOF: never a second answer
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1") == 1


# -- client faults: not 5xx, not ERROR, no tracebacks ----------------------------------------------


@pytest.fixture
def server_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_server_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [(r.name, r.getMessage()) for r in bad]


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /v2/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/lib/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    ],
)
async def test_a_malformed_request_gets_oci_json_400_and_no_error_log(
    registry_factory: RegistryFactory, server_logs: pytest.LogCaptureFixture, raw: bytes
) -> None:
    obs = Observability()
    node = await registry_factory(observability=obs)
    reader, writer = await asyncio.open_connection(*_address(node))
    writer.write(raw)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, head
    assert b"application/json" in head
    assert json.loads(body)["errors"][0]["code"]
    assert_no_server_error_logged(server_logs)


async def test_a_client_gone_mid_patch_is_499_not_500(
    registry_factory: RegistryFactory, server_logs: pytest.LogCaptureFixture
) -> None:
    obs = Observability()
    node = await registry_factory(observability=obs)
    started = await node.request("POST", "/v2/lib/app/blobs/uploads/")
    location = started.headers["Location"]
    _, writer = await asyncio.open_connection(*_address(node))
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    writer.write(b"x" * 10_000)
    await writer.drain()
    route = "/v2/{name}/blobs/uploads/{uuid}"
    # The handler is reading the body (the session's lock is held) when the client leaves.
    uuid = location.rsplit("/", 1)[1]
    await until(lambda: node.ctx.uploads._session(uuid).lock.locked())
    writer.transport.abort()
    await until(lambda: _requests(obs, route, "PATCH", "499") == 1)
    assert _requests(obs, route, "PATCH", "500") is None
    # The session survives at its old offset: the client can resume.
    status = await node.request("GET", location)
    assert status.status == 204
    assert status.headers["Range"] == "0-0"
    assert_no_server_error_logged(server_logs)


async def test_a_client_gone_mid_download_is_499_and_logged_quietly(
    registry_factory: RegistryFactory, server_logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    obs = Observability()
    node = await registry_factory(observability=obs)
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB: far more than the socket buffers
    digest = digest_of(data)
    pushed = await node.request("POST", f"/v2/lib/app/blobs/uploads/?digest={digest}", data=data)
    assert pushed.status == 201
    reader, writer = await asyncio.open_connection(*_address(node))
    writer.write(f"GET /v2/lib/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readexactly(4096)
    writer.transport.abort()
    route = "/v2/{name}/blobs/{digest}"
    await until(lambda: _requests(obs, route, "GET", "499") == 1)
    assert _requests(obs, route, "GET", "200") is None
    assert_no_server_error_logged(server_logs)
