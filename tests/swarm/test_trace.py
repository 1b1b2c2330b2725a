"""The lag trace of a simulated swarm (``p2preg.swarm.trace``): it changes nothing in the run,
and a host's idle time by cause adds up to how long its downlink was idle. Seeded."""

from __future__ import annotations

import pytest

from p2preg.swarm.scheduler import SchedulerConfig
from p2preg.swarm.sim import BlobSpec, Topology, swarm
from p2preg.swarm.trace import CAUSES, LagTrace

MB = 1e6
# No slack: the hosts' links run at the origin's rate, as in Kraken's case.
TOPOLOGY = Topology(40 * MB, 40 * MB, 40 * MB, rtt_s=0.001)
BLOBS = [BlobSpec.of("sha256:" + c * 64, 8 << 20, 1 << 20) for c in "ab"]
N = 6


def _run(traced: bool) -> tuple[object, LagTrace | None]:
    # Rules 1-6 (no tracker): their idle time is large enough to check the causes against.
    sim = swarm(1, N, TOPOLOGY, BLOBS, scheduler=SchedulerConfig(tracker=False))
    if not traced:
        return sim.run(until_s=60), None
    trace = LagTrace(sim, interval_s=0.002)
    return trace.run(until_s=60), trace


def test_a_traced_run_is_the_same_run() -> None:
    plain, _ = _run(False)
    traced, trace = _run(True)
    assert trace is not None and trace.times
    assert traced == plain


def test_idle_by_cause_adds_up_to_the_downlink_idle_time() -> None:
    _, trace = _run(True)
    assert trace is not None
    total = sum(b.layout.size for b in BLOBS)
    owners = {n for n, h in trace.hosts.items() if h.owner_of}
    assert len(owners) in (1, 2)
    for name, host in trace.hosts.items():
        assert host.done_s is not None
        assert set(host.idle_s) == set(CAUSES)
        idle = host.done_s - total / TOPOLOGY.host_down_bps
        assert idle > 0  # the swarm never runs a downlink full all the time
        assert trace.idle_total(name) == pytest.approx(idle, abs=0.03)
        # The last sample before the finish: nothing left to receive.
        assert trace.hosts[name].received[-1] == pytest.approx(total)
    # The lag behind the frontier is never negative by more than a piece in flight.
    for name in trace.hosts:
        assert min(trace.lag_s(name)) > -2 * (1 << 20) / TOPOLOGY.host_down_bps


def test_causes_over_time_bins_the_same_idle_time() -> None:
    _, trace = _run(True)
    assert trace is not None
    starts, causes = trace.causes_over_time(0.1)
    binned = sum(sum(v) for v in causes.values()) * 0.1
    by_host = sum(trace.idle_total(n) for n in trace.hosts)
    assert binned == pytest.approx(by_host, rel=1e-6)
    assert starts[0] == 0.0 and len(starts) == len(causes["frontier/flows"])
