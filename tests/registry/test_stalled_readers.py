"""Readers that stop reading must cost the node nothing it needs for anyone else.

Blob bodies go out with non-blocking ``os.sendfile`` driven by socket writability on the event
loop (``registry/fileslice.py``), so 1,000 connections that asked for a 64 MiB blob and never read
hold no thread and no pool slot: a fresh GET and a Range GET take as long as without them. A
reader that makes no progress for the send-progress timeout is reset. Run under uvloop, the
node's loop.
"""

from __future__ import annotations

import asyncio
import random
import resource
import select
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import uvloop

from tests.registry.conftest import RegistryNode, start_registry
from tests.registry.helpers import push_blob

STALLED_READERS = 1000
BIG = random.Random(21).randbytes(64 * 1024 * 1024)
SMALL = random.Random(22).randbytes(1024 * 1024 + 5)
_RCVBUF = 4096


def run_uvloop(
    root: Path, body: Callable[[RegistryNode], Awaitable[None]], **options: float
) -> None:
    async def main() -> None:
        node = await start_registry(root, **options)
        try:
            await body(node)
        finally:
            await node.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _stalled_request(port: int, path: str) -> socket.socket:
    """A connection with a tiny receive buffer that sends one GET and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)  # before connect: small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def _wait_all(socks: list[socket.socket], events: int, timeout_s: float) -> int:
    """Wait (in a thread) until every socket reports one of ``events``; return how many did."""
    poller = select.poll()
    pending = {s.fileno() for s in socks}
    for fd in pending:
        poller.register(fd, events)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            if fd in pending:
                pending.discard(fd)
                poller.unregister(fd)
    return len(socks) - len(pending)


async def _timed_gets(node: RegistryNode, path: str, headers: dict[str, str], expect: bytes,
                      rounds: int = 7) -> float:
    """The median time of ``rounds`` GETs on fresh connections, each checked byte for byte."""
    times = []
    timeout = aiohttp.ClientTimeout(total=20)
    for _ in range(rounds):
        async with aiohttp.ClientSession(timeout=timeout) as http:
            started = time.perf_counter()
            async with http.get(node.url(path), headers=headers) as response:
                body = await response.read()
            times.append(time.perf_counter() - started)
        assert response.status == (206 if headers else 200)
        assert body == expect
    return statistics.median(times)


def test_a_thousand_stalled_readers_add_under_100_ms_to_a_fresh_get(tmp_path: Path) -> None:
    _raise_fd_limit(3 * STALLED_READERS + 512)

    async def body(node: RegistryNode) -> None:
        big = await push_blob(node, "big/blob", BIG)
        small = await push_blob(node, "small/blob", SMALL)
        whole = f"/v2/small/blob/blobs/{small}"
        ranged = f"/v2/big/blob/blobs/{big}"
        part = {"Range": "bytes=1000000-1999999"}
        expect_part = BIG[1000000:2000000]
        before = await _timed_gets(node, whole, {}, SMALL)
        before_range = await _timed_gets(node, ranged, part, expect_part)

        port = int(node.base_url.rsplit(":", 1)[1])
        stalled: list[socket.socket] = []
        try:
            for _ in range(STALLED_READERS):
                stalled.append(await asyncio.to_thread(
                    _stalled_request, port, f"/v2/big/blob/blobs/{big}"))
            # Every stalled reader got its headers and a first slice of the body, then stopped.
            answered = await asyncio.to_thread(_wait_all, stalled, select.POLLIN, 60.0)
            assert answered == STALLED_READERS
            after = await _timed_gets(node, whole, {}, SMALL)
            after_range = await _timed_gets(node, ranged, part, expect_part)
        finally:
            for sock in stalled:
                sock.close()
        print(f"fresh GET {before * 1000:.1f} -> {after * 1000:.1f} ms, "
              f"Range GET {before_range * 1000:.1f} -> {after_range * 1000:.1f} ms")
        assert after - before < 0.100
        assert after_range - before_range < 0.100

    run_uvloop(tmp_path, body)


def test_a_reader_making_no_progress_is_reset_after_the_timeout(tmp_path: Path) -> None:
    async def body(node: RegistryNode) -> None:
        big = await push_blob(node, "big/blob", BIG)
        port = int(node.base_url.rsplit(":", 1)[1])
        sock = await asyncio.to_thread(_stalled_request, port, f"/v2/big/blob/blobs/{big}")
        try:
            # The node resets the connection: the client sees an error/hang-up while its buffer
            # still holds unread bytes, long before 64 MiB could have gone out.
            dropped = await asyncio.to_thread(
                _wait_all, [sock], select.POLLERR | select.POLLHUP | select.POLLRDHUP, 20.0)
            assert dropped == 1
            received = 0
            with pytest.raises(ConnectionResetError):
                while chunk := sock.recv(1 << 16):
                    received += len(chunk)
            assert received < len(BIG)
        finally:
            sock.close()
        # The node still serves others, whole and exact.
        reply = await node.request("GET", f"/v2/big/blob/blobs/{big}")
        assert reply.status == 200 and reply.body == BIG

    run_uvloop(tmp_path, body, send_progress_timeout_s=0.3)
