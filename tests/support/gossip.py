"""Bare ``GossipService``s on 127.0.0.1 with short protocol intervals, for tests.

Owns ``FAST`` (intervals that make a two-node cluster converge in tenths of a second),
``fast_config`` and ``gossip_services`` (a factory of started services, all stopped on exit).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from p2preg.gossip.service import GossipService, GossipServiceConfig

FAST: dict[str, float] = {
    "probe_interval_s": 0.1,
    "probe_timeout_s": 0.05,
    "gossip_interval_s": 0.02,
    "push_pull_interval_s": 0.5,
    "seed_interval_s": 0.3,
    "leave_timeout_s": 0.2,
    "stream_timeout_s": 0.5,
}

#: ``start(name, seed=1, join=(), **config overrides)`` -> a started service.
ServiceFactory = Callable[..., Awaitable[GossipService]]


def fast_config(name: str, join: tuple[str, ...] = (), **overrides: object) -> GossipServiceConfig:
    values: dict[str, object] = {
        "gossip_listen": "127.0.0.1:0",
        "node_name": name,
        "advertise": f"127.0.0.1:{5000 + len(name)}",
        "join": join,
        **FAST,
    }
    values.update(overrides)
    return GossipServiceConfig(**values)  # type: ignore[arg-type]


def gossip_address(svc: GossipService) -> str:
    host, port = svc.gossip_address
    return f"{host}:{port}"


@contextlib.asynccontextmanager
async def gossip_services() -> AsyncIterator[ServiceFactory]:
    """Yields ``start``; every service it started is stopped (without a leave) on exit."""
    started: list[GossipService] = []

    async def start(name: str, seed: int = 1, join: tuple[str, ...] = (),
                    **overrides: object) -> GossipService:
        svc = GossipService(fast_config(name, join, **overrides), rng=random.Random(seed))
        await svc.start()
        started.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in started:
            await svc.stop(leave=False)
