"""Cut-through: a node passes on a piece it is still receiving (``pull.piece_feed.PieceFeed``),
tested on loopback against a real ``P2PServer`` whose swarm fill is a stand-in holding a feed
the test drives by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from p2preg.fetch.singleflight import BlobFetcher
from p2preg.oci.digest import Digest
from p2preg.p2p import server as server_module
from p2preg.p2p.auth import NODE_HEADER
from p2preg.p2p.server import P2PServer, PieceHolder
from p2preg.pull.piece_feed import PieceFeed
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.swarm.pieces import LOAD_HEADER, SWARM_HEADER, Layout
from tests.p2p.harness import payload, start_app
from tests.p2p.test_server import HeldSource

SIZE = 4 << 20
PIECE = 3


@dataclass
class FakeSwarm:
    """A swarm fill that holds no whole piece in memory and receives ``PIECE`` via ``feed``."""

    feed: PieceFeed | None = None

    def piece(self, index: int) -> bytes | None:
        return None

    def receiving(self, index: int) -> PieceFeed | None:
        feed = self.feed
        if index != PIECE or feed is None or feed.done or feed.failed:
            return None
        return feed

    def have_in_memory(self) -> frozenset[int]:
        return frozenset()

    def check_owner(self) -> None:
        return None

    async def wait_piece(self, index: int, timeout: float) -> bool:
        return False


@dataclass
class Relay:
    server: P2PServer
    swarm: FakeSwarm
    http: aiohttp.ClientSession
    host: str
    digest: Digest
    data: bytes
    span: tuple[int, int]

    def feed(self, source: str = "src") -> PieceFeed:
        self.swarm.feed = PieceFeed(source, *self.span, from_root=False)
        return self.swarm.feed

    def ask(self, node: str = "asker") -> aiohttp.client._RequestContextManager:
        start, end = self.span
        return self.http.get(f"http://{self.host}/p2p/v1/blobs/{self.digest}",
                             headers={NODE_HEADER: node, SWARM_HEADER: "1",
                                      "Range": f"bytes={start}-{end - 1}"})


@dataclass
class Served:
    """A ``P2PServer`` on loopback whose fill knows the size and holds piece 0 only."""

    server: P2PServer
    http: aiohttp.ClientSession
    host: str
    digest: Digest
    data: bytes


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, size: int, swarm: PieceHolder) -> AsyncIterator[Served]:
    """A real ``P2PServer`` over a held fill of ``size`` bytes, its swarm fill ``swarm``."""
    blobs = BlobStore(StoreLayout(tmp_path / "store"))
    blobs.recover()
    fetcher = BlobFetcher(blobs)
    data, digest = payload(size)
    upstream = HeldSource(data, hold=100_000)  # a fill that knows the size, with piece 0 only
    fill = fetcher.fill(digest, [upstream])
    await upstream.holding.wait()
    server = P2PServer(blobs, fills=fetcher.in_flight, swarms=lambda d: swarm,
                       long_polls=lambda d: False)
    runner, host = await start_app(server.app())
    http = aiohttp.ClientSession()
    try:
        yield Served(server, http, host, digest, data)
    finally:
        upstream.gate.set()
        await fill.wait()
        await http.close()
        await fetcher.close()
        await runner.cleanup()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    swarm = FakeSwarm()
    layout = Layout.for_size(SIZE)
    assert layout.count > PIECE + 1
    async with serving(tmp_path, SIZE, swarm) as s:
        yield Relay(s.server, swarm, s.http, s.host, s.digest, s.data, layout.span(PIECE))


async def test_a_piece_being_received_is_passed_on_as_its_bytes_arrive(relay: Relay) -> None:
    feed = relay.feed()
    start, end = relay.span
    expected = relay.data[start:end]
    feed.add(expected[:1000])
    async with relay.ask() as resp:
        assert resp.status == 206
        first = await resp.content.readexactly(1000)  # sent before the piece is whole
        assert first == expected[:1000]
        feed.add(expected[1000:200_000])
        feed.add(expected[200_000:])
        feed.finish(True)
        rest = await resp.read()
    assert first + rest == expected
    assert relay.server.stats.served["piece_cut_through"] == 1


async def test_the_peer_we_receive_the_piece_from_is_told_404_never_made_to_wait(
        relay: Relay) -> None:
    feed = relay.feed(source="src")
    feed.add(b"x")
    async with relay.ask(node="src") as resp:
        assert resp.status == 404
    assert relay.server.stats.served["piece_cut_through"] == 0


async def test_a_feed_without_a_first_byte_is_404_after_a_bounded_wait(
        relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "CUT_THROUGH_WAIT_S", 0.05)
    relay.feed()
    async with relay.ask() as resp:
        assert resp.status == 404
    assert relay.server.stats.served["piece_missing"] == 1


async def test_a_source_failing_mid_piece_aborts_the_answer_never_a_short_piece(
        relay: Relay) -> None:
    feed = relay.feed()
    start = relay.span[0]
    feed.add(relay.data[start:start + 5000])
    async with relay.ask() as resp:
        assert resp.status == 206
        await resp.content.readexactly(5000)
        feed.finish(False)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_without_a_feed_a_non_root_answers_404_at_once(relay: Relay) -> None:
    async with relay.ask() as resp:
        assert resp.status == 404
    await asyncio.sleep(0)
    assert relay.server.stats.served["piece_missing"] == 1


async def test_every_piece_answer_carries_the_uploads_in_progress(relay: Relay) -> None:
    feed = relay.feed()
    start, end = relay.span
    expected = relay.data[start:end]
    feed.add(expected[:1000])
    async with relay.ask(node="a") as first:
        assert (first.status, first.headers[LOAD_HEADER]) == (206, "1")  # itself
        async with relay.ask(node="src") as missing:
            assert (missing.status, missing.headers[LOAD_HEADER]) == (404, "1")
        async with relay.ask(node="b") as second:
            assert (second.status, second.headers[LOAD_HEADER]) == (206, "2")
            feed.add(expected[1000:])
            feed.finish(True)
            assert await second.read() == expected
        assert await first.read() == expected
    async with relay.ask(node="src") as missing:
        assert (missing.status, missing.headers[LOAD_HEADER]) == (404, "0")
