"""Blob GETs under uvloop (the node's loop): the zero-copy non-blocking ``os.sendfile`` path must
send exact bytes, honour ranges, survive clients that vanish mid-body, and leave the server able to
serve the next request on the same descriptor."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from p2preg.registry import fileslice
from tests.registry.conftest import RegistryNode, start_registry
from tests.registry.helpers import push_blob

BLOB = random.Random(7).randbytes(8 * 1024 * 1024 + 13)


def run_uvloop(root: Path, body: Callable[[RegistryNode, str], Awaitable[None]]) -> None:
    async def main() -> None:
        node = await start_registry(root)
        try:
            digest = await push_blob(node, "big/blob", BLOB)
            await body(node, digest)
        finally:
            await node.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_whole_blob_and_ranges_are_exact(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    original = fileslice.SocketSender.send

    async def spy(self, offset, count):  # type: ignore[no-untyped-def]
        calls.append(count)
        await original(self, offset, count)

    monkeypatch.setattr(fileslice.SocketSender, "send", spy)

    async def body(node: RegistryNode, digest: str) -> None:
        reply = await node.request("GET", f"/v2/big/blob/blobs/{digest}")
        assert reply.status == 200
        assert reply.body == BLOB
        reply = await node.request("GET", f"/v2/big/blob/blobs/{digest}",
                                   headers={"Range": "bytes=1000-5000999"})
        assert reply.status == 206
        assert reply.body == BLOB[1000:5001000]

    run_uvloop(tmp_path, body)
    assert calls == [len(BLOB), 5_000_000]  # both went through the zero-copy path


def test_client_vanishing_mid_body_leaves_server_healthy(tmp_path: Path) -> None:
    async def body(node: RegistryNode, digest: str) -> None:
        port = int(node.base_url.rsplit(":", 1)[1])
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v2/big/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            await reader.readexactly(64 * 1024)  # headers and the start of the body
            writer.transport.abort()  # RST: the server's sendfile fails mid-way
        # The server still answers, complete and exact, on fresh connections.
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(node.url(f"/v2/big/blob/blobs/{digest}")) as response:
                    assert response.status == 200
                    assert await response.read() == BLOB

    run_uvloop(tmp_path, body)
