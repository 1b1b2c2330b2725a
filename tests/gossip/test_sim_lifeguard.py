"""False deaths under packet loss, with and without the Lifeguard refinements.

Uniform 5% loss alone: with Lifeguard, no live node is declared dead in 10 simulated minutes.
The same lossy network with one degraded member (its inbound packets are processed late, the
situation Lifeguard was designed for): with Lifeguard off the degraded member's own short
suspicion timers kill healthy members; with it on, no healthy member is ever declared dead.
The degraded member's lag is 1.25x the cluster's minimum suspicion timeout (10 s at N=100, 15 s
at N=1,000), so the stress is the same at every size: classic SWIM's fixed timeout expires
before the refutations reach the slow member.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from p2preg.gossip.config import GossipConfig
from p2preg.gossip.sim import Simulation
from p2preg.gossip.suspicion import suspicion_bounds

RecordProperty = Callable[[str, object], None]


def lossy_cluster(count: int, *, lifeguard: bool, seed: int) -> tuple[Simulation, list[str]]:
    config = GossipConfig(name="template", gossip_addr=("0.0.0.0", 0), lifeguard=lifeguard)
    sim = Simulation(seed=seed, loss=0.05, config=config)
    return sim, sim.add_converged_cluster(count)


def degraded_lag_s(sim: Simulation, count: int) -> float:
    """1.25x the minimum suspicion timeout of a ``count``-node cluster, from its config."""
    cfg = sim.template
    min_s, _ = suspicion_bounds(
        cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, count, cfg.probe_interval_s
    )
    return 1.25 * min_s


@pytest.mark.parametrize(
    "count",
    [100, pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.timeout(3600)])],
    ids=lambda n: f"N={n}",
)
def test_no_live_node_is_declared_dead_under_5pct_loss_and_lifeguard_off_kills_healthy_nodes(
    count: int, record_property: RecordProperty
) -> None:
    # 1. Lifeguard on, 5% loss everywhere, 10 simulated minutes: not one false death.
    sim, _ = lossy_cluster(count, lifeguard=True, seed=41)
    sim.run_for(600.0)
    assert sim.counters.datagrams_lost > 0.04 * sim.counters.datagrams_sent
    assert sim.counters.suspicions > 0, "loss must actually cause suspicions"
    assert sim.counters.deaths == []
    record_property("suspicions_lifeguard_on", sim.counters.suspicions)
    record_property("refutations_lifeguard_on", sim.counters.refutations)

    # 2. Same network plus one degraded member (inbound processing late), on and off.
    false_deaths = {}
    for lifeguard in (True, False):
        sim, names = lossy_cluster(count, lifeguard=lifeguard, seed=42)
        degraded = names[0]
        sim.set_inbound_lag(degraded, degraded_lag_s(sim, count))
        sim.run_for(120.0)
        false_deaths[lifeguard] = [d for d in sim.counters.deaths if d.subject != degraded]
        record_property(f"suspicions_degraded_lifeguard_{'on' if lifeguard else 'off'}",
                        sim.counters.suspicions)  # fmt: skip
    record_property("healthy_deaths_lifeguard_off", len(false_deaths[False]))
    print(f"N={count}: healthy nodes declared dead: on={len(false_deaths[True])} "
          f"off={len(false_deaths[False])}")  # fmt: skip
    assert false_deaths[True] == []
    assert len(false_deaths[False]) > 0
