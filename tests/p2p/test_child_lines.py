"""An assigned child's piece answers at one parent go one at a time (``p2p.child_lines``):
the unit on its own, then a real ``P2PServer`` on loopback holding a child's second answer
until the first's last byte is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from p2preg.oci.digest import Digest
from p2preg.p2p.auth import NODE_HEADER
from p2preg.p2p.child_lines import REMEMBERED_ENDS, ChildLines
from p2preg.p2p.server import P2PServer
from p2preg.pull.piece_feed import PieceFeed
from p2preg.swarm.pieces import CHILD_HEADER, SWARM_HEADER, Layout
from tests.p2p.test_cut_through import serving

SIZE = 4 << 20
FED, HELD = 3, 5  # FED arrives through a feed the test drives; HELD is in memory


async def test_a_childs_turns_are_taken_one_at_a_time_in_the_order_asked() -> None:
    lines = ChildLines()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def answer(name: str, child: str, hold: bool) -> None:
        async with lines.turn("d", child):
            order.append(f"{name} start")
            if hold:
                first_in.set()
                await release.wait()
            order.append(f"{name} end")

    first = asyncio.create_task(answer("a1", "a", True))
    await first_in.wait()
    second = asyncio.create_task(answer("a2", "a", False))
    other = asyncio.create_task(answer("b1", "b", False))  # another child: its own line
    await other
    assert order == ["a1 start", "b1 start", "b1 end"]
    release.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["a1 end", "a2 start", "a2 end"]
    assert len(lines) == 0  # forgotten once nobody holds or waits


async def test_a_cancelled_waiter_leaves_the_line_and_frees_it() -> None:
    lines = ChildLines()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with lines.turn("d", "a"):
            holding.set()
            await release.wait()

    async def wait_turn() -> None:
        async with lines.turn("d", "a"):
            pass

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiter = asyncio.create_task(wait_turn())
    await asyncio.sleep(0)
    waiter.cancel()  # the child withdrew its request (its connection closed)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert len(lines) == 0


def test_idle_before_is_how_long_after_the_last_answer_ended_the_request_came() -> None:
    lines = ChildLines()
    assert lines.idle_before("d", "a", 1.0) is None  # no earlier answer
    lines.ended("d", "a", 1.0)
    assert lines.idle_before("d", "a", 1.25) == 0.25  # a request round trip of idle link
    assert lines.idle_before("d", "a", 0.9) == 0.0  # it was already waiting (pipelined)
    assert lines.idle_before("d", "b", 1.25) is None
    for i in range(REMEMBERED_ENDS):
        lines.ended("d", f"c{i}", 2.0)
    assert lines.idle_before("d", "a", 3.0) is None  # bounded: the oldest is forgotten


@dataclass
class FakeSwarm:
    """A swarm fill receiving ``FED`` through ``feed`` and holding ``HELD`` in memory."""

    held: bytes
    feed: PieceFeed | None = None
    waiting: list[int] = field(default_factory=list)

    def piece(self, index: int) -> bytes | None:
        return self.held if index == HELD else None

    def receiving(self, index: int) -> PieceFeed | None:
        feed = self.feed
        if index != FED or feed is None or feed.done or feed.failed:
            return None
        return feed

    def have_in_memory(self) -> frozenset[int]:
        return frozenset({HELD})

    def check_owner(self) -> None:
        return None

    async def wait_piece(self, index: int, timeout: float) -> bool:
        self.waiting.append(index)
        return False


@dataclass
class Parent:
    server: P2PServer
    http: aiohttp.ClientSession
    host: str
    digest: Digest
    data: bytes
    layout: Layout
    swarm: FakeSwarm

    def ask(self, piece: int, node: str = "child", child: bool = True
            ) -> aiohttp.client._RequestContextManager:
        start, end = self.layout.span(piece)
        headers = {NODE_HEADER: node, SWARM_HEADER: "1", "Range": f"bytes={start}-{end - 1}"}
        if child:
            headers[CHILD_HEADER] = "1"
        return self.http.get(f"http://{self.host}/p2p/v1/blobs/{self.digest}", headers=headers)

    def piece(self, index: int) -> bytes:
        start, end = self.layout.span(index)
        return self.data[start:end]


@pytest.fixture
async def parent(tmp_path: Path) -> AsyncIterator[Parent]:
    layout = Layout.for_size(SIZE)
    assert layout.count > HELD
    swarm = FakeSwarm(b"")
    async with serving(tmp_path, SIZE, swarm) as s:
        start, end = layout.span(HELD)
        swarm.held = s.data[start:end]
        start, end = layout.span(FED)
        swarm.feed = PieceFeed("grandparent", start, end, from_root=False)
        yield Parent(s.server, s.http, s.host, s.digest, s.data, layout, swarm)


async def test_a_childs_second_piece_starts_after_the_first_ones_last_byte(
        parent: Parent) -> None:
    feed = parent.swarm.feed
    assert feed is not None
    fed = parent.piece(FED)
    feed.add(fed[:1000])
    async with parent.ask(FED) as first:
        assert first.status == 206
        assert await first.content.readexactly(1000) == fed[:1000]
        second = asyncio.create_task(parent.ask(HELD).__aenter__())
        lines = parent.server._child_lines
        for _ in range(1000):  # until the second request waits in the line (no clock)
            if lines.users(str(parent.digest), "child") == 2:
                break
            await asyncio.sleep(0.001)
        assert lines.users(str(parent.digest), "child") == 2
        # Another child's and a plain request for the held piece are answered meanwhile:
        # only the child whose answer is being sent waits.
        for node, child in (("other", True), ("plain", False)):
            async with parent.ask(HELD, node=node, child=child) as other:
                assert (other.status, await other.read()) == (206, parent.piece(HELD))
        assert not second.done()  # the held piece waits for its turn
        feed.add(fed[1000:])
        feed.finish(True)
        assert await first.read() == fed[1000:]
    answer = await second
    try:
        assert (answer.status, await answer.read()) == (206, parent.piece(HELD))
    finally:
        answer.release()
    served = parent.server.stats.served
    assert served["piece_child"] == 3
    assert len(parent.server._child_lines) == 0
    # The second request was there before the first answer ended: no idle link between.
    assert (served["piece_child_next"], served["piece_child_gap_ms"]) == (1, 0)


async def test_a_piece_ready_first_is_sent_first_when_the_earlier_one_is_awaited(
        parent: Parent) -> None:
    feed = parent.swarm.feed
    assert feed is not None
    # FED has no first byte yet: its answer waits for the piece, not in the line.
    first = asyncio.create_task(parent.ask(FED).__aenter__())
    async with parent.ask(HELD) as second:
        assert (second.status, await second.read()) == (206, parent.piece(HELD))
    assert not first.done()
    feed.add(parent.piece(FED))
    feed.finish(True)
    answer = await first
    try:
        assert (answer.status, await answer.read()) == (206, parent.piece(FED))
    finally:
        answer.release()
