"""The coordinator gives up on a node that stops answering while gossip still says alive."""

from __future__ import annotations

import asyncio
import random
import socket

from p2preg.clock import MonotonicClock, WallClock
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.wire import Keyring
from p2preg.operate.coordinator import Coordinator
from p2preg.operate.reference import parse_image
from p2preg.p2p.auth import RequestSigner


class Members:
    node_name = "n0"

    def __init__(self, members: list[Member]) -> None:
        self._members = members

    def members(self) -> list[Member]:
        return list(self._members)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


async def test_a_silent_alive_member_fails_after_unreachable_s_with_the_cause() -> None:
    member = Member("ghost", ("127.0.0.1", 1), f"127.0.0.1:{closed_port()}", "", 1,
                    MemberStatus.ALIVE)
    coordinator = Coordinator(
        Members([member]), RequestSigner(Keyring([b"k" * 32]), rng=random.Random(1)),
        scheme="http", clock=MonotonicClock(), wall_clock=WallClock(), rng=random.Random(2),
        poll_s=0.05, unreachable_s=0.5)
    try:
        pull = coordinator.start(parse_image("busybox"))
        async with asyncio.timeout(10):
            while not pull.finished:
                await asyncio.sleep(0.02)
        run = pull.nodes["ghost"]
        assert run.state == "failed"
        assert run.error.startswith("unreachable for 0.5s: no answer: ")
        assert pull.to_json()["failed"] == ["ghost"]
    finally:
        await coordinator.close()
