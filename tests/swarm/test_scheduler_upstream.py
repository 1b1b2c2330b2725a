"""Scheduler rule 1's upstream limit: while the node streams a blob from its upstream, its
swarm fills keep at most ``upstream_busy_requests`` in flight. Unit, then in the simulator on
a small Kraken-like shape (two blobs with different owners, no slack). Seeded."""

from __future__ import annotations

import random

import pytest

from p2preg.swarm.pieces import Have, Layout
from p2preg.swarm.scheduler import ROLE_FETCHER, ROLE_OWNER, Scheduler, SchedulerConfig
from p2preg.swarm.sim import BlobSpec, Topology, swarm

MB = 1e6


def _sched(**kw: int) -> Scheduler:
    s = Scheduler(Layout(size=40, piece_bytes=4), self_name="me",
                  config=SchedulerConfig(max_requests=6, per_peer=3, tracker=False, **kw),
                  rng=random.Random(1))
    s.set_peers({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER}, "o")
    for name in ("a", "b"):
        s.on_availability(name, Have.of(0, range(10)), 0)
    return s


def test_an_upstream_stream_caps_the_requests_in_flight() -> None:
    s = _sched(upstream_busy_requests=2)
    assert len(s.next_requests(0, upstream_busy=True)) == 2
    assert s.next_requests(0.1, upstream_busy=True) == []
    # the upstream done: up to max_requests again
    assert len(s.next_requests(0.2)) == 4
    assert len(s.in_flight()) == 6


def test_without_an_upstream_stream_the_limit_does_not_apply() -> None:
    assert len(_sched(upstream_busy_requests=2).next_requests(0)) == 6


TOPOLOGY = Topology(40 * MB, 40 * MB, 40 * MB, rtt_s=0.001)
BLOBS = [BlobSpec.of("sha256:" + c * 64, 16 << 20, 1 << 20) for c in "ab"]
ONE_TRANSFER_S = 2 * (16 << 20) / (40 * MB)


@pytest.mark.parametrize("seed", [1, 2])
def test_owners_that_keep_their_downlink_for_the_origin_stream_finish_everyone_sooner(
        seed: int) -> None:
    def p50(limit: int) -> float:
        sim = swarm(seed, 8, TOPOLOGY, BLOBS,
                    scheduler=SchedulerConfig(upstream_busy_requests=limit, tracker=False))
        return sim.run(until_s=60).quantile(0.5)

    limited, unlimited = p50(2), p50(8)  # 8 = max_requests: the rule off
    assert limited <= 1.25 * ONE_TRANSFER_S
    # (0.85 before slots-busy answers hinted the piece's places and backed the peer off:
    # those make the unlimited run faster too)
    assert limited < 0.95 * unlimited
