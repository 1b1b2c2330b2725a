"""The driver's cap on concurrent inbound push-pulls, on real 127.0.0.1 sockets.

Beyond ``max_inbound_push_pulls`` running exchanges a new inbound stream is closed at once and
counted as refused; its initiator counts a failed push-pull (not a completed one), keeps
running, and succeeds once the node has room again. Every wait is bounded and waits for a
condition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from p2preg.gossip.config import Addr, GossipConfig
from p2preg.gossip.core import GossipCore
from p2preg.gossip.driver import GossipDriver
from p2preg.gossip.member import MemberStatus


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def _factory(name: str, seed: int) -> Callable[[Addr], GossipCore]:
    def make(addr: Addr) -> GossipCore:
        return GossipCore(GossipConfig(name, addr), random.Random(seed), 0.0)

    return make


@pytest.fixture
async def drivers() -> AsyncIterator[list[GossipDriver]]:
    started: list[GossipDriver] = []
    yield started
    for driver in started:
        await driver.stop(leave=False)


async def _start(
    drivers: list[GossipDriver], name: str, seed: int, *, max_inbound_push_pulls: int = 32
) -> GossipDriver:
    driver = GossipDriver(stream_timeout_s=30.0, max_inbound_push_pulls=max_inbound_push_pulls)
    drivers.append(driver)
    await driver.start("127.0.0.1", 0, _factory(name, seed))
    return driver


async def test_a_third_inbound_push_pull_beyond_a_cap_of_two_is_refused_and_retried_later(
    drivers: list[GossipDriver],
) -> None:
    a = await _start(drivers, "a", 1, max_inbound_push_pulls=2)
    b = await _start(drivers, "b", 2)
    assert a.address is not None and b.address is not None
    # Two slow initiators hold both inbound slots (connected, request not sent yet).
    held = [await asyncio.open_connection(*a.address) for _ in range(2)]
    await until(lambda: a.stats.streams_accepted == 2)

    b.join([a.address])  # b's join push-pull is the third concurrent inbound one
    await until(lambda: b.stats.stream_failures == 1)
    assert a.stats.streams_refused == 1
    assert b.stats.streams_completed == 0
    assert a.core.member("b") is None
    assert b.running

    for _, writer in held:
        writer.close()
    await until(lambda: a.stats.stream_failures + a.stats.streams_completed == 2)
    b.join([a.address])  # the retry (the next period, or here the operator joining again)
    await until(lambda: b.stats.streams_completed == 1)
    await until(lambda: (m := a.core.member("b")) is not None and m.status == MemberStatus.ALIVE)
    assert a.stats.streams_refused == 1
    assert (m := b.core.member("a")) is not None and m.status == MemberStatus.ALIVE


async def test_inbound_slots_are_not_taken_by_the_nodes_own_outbound_push_pulls(
    drivers: list[GossipDriver],
) -> None:
    a = await _start(drivers, "a", 1, max_inbound_push_pulls=1)
    b = await _start(drivers, "b", 2)
    assert a.address is not None and b.address is not None
    # a opens a push-pull of its own to a peer that never answers (a held listener).
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    try:
        port = silent.sockets[0].getsockname()[1]
        a.join([("127.0.0.1", port)])
        await until(lambda: len(held) == 1)
        b.join([a.address])
        await until(lambda: b.stats.streams_completed == 1)
        assert a.stats.streams_refused == 0
        # Only the inbound exchange finished on a: its own one is still waiting for a reply.
        assert a.stats.streams_completed == 1 and a.stats.stream_failures == 0
    finally:
        for writer in held:
            writer.close()
        silent.close()
