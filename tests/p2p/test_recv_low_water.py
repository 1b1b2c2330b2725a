"""``pull.swarm_source.RecvLowWater``: the kernel wakes a piece's reader only once 64 KiB wait,
but never for more than the body still owes (the tail must always arrive), and the connection
goes back to the pool with the mark at 1. On loopback against a real aiohttp server whose
body the test releases in two steps."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from p2preg.pull.swarm_source import RECV_LOW_WATER_BYTES, RecvLowWater
from p2preg.tlsconfig import server_context
from tests.auth.certs import make_self_signed
from tests.observability.tinyapp import serving
from tests.p2p.harness import payload, start_app

HEAD = 1024
TAIL = 100
DATA, _ = payload(300 << 10, seed=9)


class TwoStepBody:
    """Sends ``HEAD`` bytes, all but the last ``TAIL`` once ``more`` is set, then the rest once
    ``tail`` is set."""

    def __init__(self) -> None:
        self.more = asyncio.Event()
        self.tail = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(DATA)
        await response.prepare(request)
        await response.write(DATA[:HEAD])
        await self.more.wait()
        await response.write(DATA[HEAD:-TAIL])
        await self.tail.wait()
        await response.write(DATA[-TAIL:])
        await response.write_eof()
        return response

    async def small(self, request: web.Request) -> web.Response:
        return web.Response(body=b"ok")


@pytest.fixture
async def server() -> AsyncIterator[tuple[TwoStepBody, str]]:
    body = TwoStepBody()
    app = web.Application()
    app.router.add_get("/body", body.handle)
    app.router.add_get("/small", body.small)
    runner, host = await start_app(app)
    yield body, host
    await runner.cleanup()


def _mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


async def test_the_mark_never_exceeds_what_the_body_owes_and_is_reset(
        server: tuple[TwoStepBody, str]) -> None:
    body, host = server
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"http://{host}/body") as response:
            assert response.connection is not None
            sock = response.connection.transport.get_extra_info("socket")
            low_water = RecvLowWater.of(response, len(DATA))
            assert _mark(sock) == RECV_LOW_WATER_BYTES  # at most HEAD of 300 KiB arrived
            got = bytearray()
            marks = []
            async for chunk, _ in response.content.iter_chunks():
                low_water.update()
                marks.append(_mark(sock))
                got += chunk
                if len(got) == HEAD:
                    body.more.set()
                if len(got) == len(DATA) - TAIL:
                    assert _mark(sock) == TAIL  # the tail alone wakes the reader
                    body.tail.set()
            low_water.reset()
            assert bytes(got) == DATA
            assert max(marks) == RECV_LOW_WATER_BYTES
            assert _mark(sock) == 1
        # the same connection (limit=1) serves the next answer, head and all, at once
        async with http.get(f"http://{host}/small") as response:
            assert await response.read() == b"ok"
            assert response.connection is None or \
                response.connection.transport.get_extra_info("socket") is sock


async def test_without_a_socket_it_does_nothing(server: tuple[TwoStepBody, str]) -> None:
    body, host = server
    body.more.set()
    body.tail.set()
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}/body") as response:
        low_water = RecvLowWater(None, response, len(DATA))
        low_water.update()
        low_water.reset()
        assert await response.read() == DATA


def test_a_socket_closed_meanwhile_is_left_alone() -> None:
    """A peer killed mid-piece closes the connection under the reader: the final ``reset``
    must not raise (a fill stopped on "negative file descriptor" before). On uvloop, the
    node's loop, whose sockets raise ``ValueError`` once their fd is closed."""

    async def run() -> None:
        body = TwoStepBody()
        app = web.Application()
        app.router.add_get("/body", body.handle)
        runner, host = await start_app(app)
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://{host}/body") as response:
                low_water = RecvLowWater.of(response, len(DATA))
                assert response.connection is not None
                sock = response.connection.transport.get_extra_info("socket")
                response.close()
                for _ in range(100):  # the transport closes its fd a loop turn or two later
                    if sock.fileno() == -1:
                        break
                    await asyncio.sleep(0)
                assert sock.fileno() == -1
                low_water.update()
                low_water.reset()
        finally:
            body.more.set()
            body.tail.set()
            await runner.cleanup()

    uvloop.run(run())


async def test_no_mark_on_a_tls_connection(tmp_path: Path) -> None:
    """Over TLS the kernel may owe fewer bytes than the body (the TLS layer holds raw bytes it
    has not decrypted yet), so a mark could leave the tail unread: none is set; the body still
    arrives whole (a peer fetch over HTTPS once stalled until its deadline)."""
    cert = make_self_signed(tmp_path / "tls")

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=DATA)

    app = web.Application()
    app.router.add_get("/blob", whole)
    client_tls = ssl.create_default_context(cafile=str(cert.cert))
    async with serving(app, ssl_context=server_context(cert.cert, cert.key)) as base, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as http, \
            http.get(f"{base}/blob") as response:
        mark = RecvLowWater.of(response, len(DATA))
        assert mark._sock is None
        assert await response.read() == DATA
