"""The TLS path of ``registry/fileslice.py`` (no raw socket: bounded chunks through the
transport): exact bytes and ranges, and a stalled TLS reader is reset after the send-progress
timeout while fresh readers are served."""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from p2preg.registry.fileslice import SEND_PROGRESS_TIMEOUT_KEY, send_file_slice
from p2preg.tlsconfig import server_context
from tests.auth.certs import SelfSigned, make_self_signed
from tests.registry.test_stalled_readers import _wait_all

DATA = random.Random(51).randbytes(16 * 1024 * 1024 + 3)


async def serve(request: web.Request) -> web.StreamResponse:
    path: Path = request.app[FILE_KEY]
    start = int(request.query.get("start", "0"))
    count = int(request.query.get("count", str(len(DATA) - start)))
    return await send_file_slice(request, web.StreamResponse(), open(path, "rb"), start, count)


FILE_KEY = web.AppKey("file", Path)


async def start_tls_server(tmp_path: Path, cert: SelfSigned) -> tuple[web.AppRunner, int]:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    app = web.Application()
    app[FILE_KEY] = path
    app[SEND_PROGRESS_TIMEOUT_KEY] = 0.3
    app.router.add_get("/blob", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    return runner, runner.addresses[0][1]


def stalled_tls_request(port: int, cert: SelfSigned) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=str(cert.cert))
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
    return tls


@pytest.fixture
def cert(tmp_path: Path) -> SelfSigned:
    return make_self_signed(tmp_path / "certs")


def test_tls_bodies_are_exact_and_a_stalled_tls_reader_is_reset(
    tmp_path: Path, cert: SelfSigned
) -> None:
    async def main() -> None:
        runner, port = await start_tls_server(tmp_path, cert)
        context = ssl.create_default_context(cafile=str(cert.cert))
        try:
            tls = await asyncio.to_thread(stalled_tls_request, port, cert)
            try:
                async with aiohttp.ClientSession() as http:
                    base = f"https://127.0.0.1:{port}/blob"
                    async with http.get(base, ssl=context) as response:
                        assert await response.read() == DATA
                    async with http.get(f"{base}?start=1000&count=3000000",
                                        ssl=context) as response:
                        assert await response.read() == DATA[1000:3001000]
                dropped = await asyncio.to_thread(
                    _wait_all, [tls], select.POLLERR | select.POLLHUP | select.POLLRDHUP, 20.0)
                assert dropped == 1
                received = 0
                with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                    while chunk := tls.recv(1 << 16):  # a reset, or a ragged EOF (TLS)
                        received += len(chunk)
                assert received < len(DATA) // 2
            finally:
                tls.close()
        finally:
            await runner.cleanup()

    async def run() -> None:
        await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
