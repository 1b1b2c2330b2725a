"""Membership at scale, in simulation: join storms, crash detection, healed partitions.

Numbers asserted are the issue's bounds; the measured values are printed (``-s``) and recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from p2preg.gossip.events import MemberSuspect
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.sim import Simulation
from p2preg.gossip.suspicion import suspicion_bounds
from tests.gossip.test_sim_support import (
    GOSSIP_INTERVAL_S,
    PROBE_INTERVAL_S,
    everyone_knows_everyone,
    everyone_sees,
    join_storm,
)

RecordProperty = Callable[[str, object], None]


@pytest.mark.parametrize(
    "count",
    [200, pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.timeout(1800)])],
    ids=lambda n: f"N={n}",
)
def test_after_a_join_storm_every_node_knows_every_member(
    count: int, record_property: RecordProperty
) -> None:
    sim = Simulation(seed=100 + count)
    join_storm(sim, count, spread_s=count / 100)
    storm_end = sim.now
    assert sim.run_for(120.0, until=sim.all_converged, check_every_s=GOSSIP_INTERVAL_S)
    rounds = math.ceil((sim.now - storm_end) / GOSSIP_INTERVAL_S)
    assert everyone_knows_everyone(sim)
    record_property("rounds_after_last_join", rounds)
    print(f"join storm N={count}: converged {rounds} gossip rounds after the last join")
    # Stragglers are repaired by the join catch-up push-pull 2-3 probe intervals after a join:
    # the view is complete within a few seconds of the last join, not after a periodic push-pull.
    assert sim.now - storm_end <= 15.0
    assert sim.counters.deaths == []


@pytest.mark.parametrize("count", [1000], ids=lambda n: f"N={n}")
def test_a_crashed_node_is_dead_everywhere_within_its_suspicion_timeout_plus_3_probes(
    count: int, record_property: RecordProperty
) -> None:
    sim = Simulation(seed=7)
    names = sim.add_converged_cluster(count)
    sim.run_for(5.0)
    victim = names[count // 2]
    suspected_at: list[float] = []
    sim.on_event = lambda node, event: (
        suspected_at.append(sim.now)
        if isinstance(event, MemberSuspect) and event.name == victim
        else None
    )
    sim.crash(victim)
    crashed_at = sim.now
    min_s, max_s = suspicion_bounds(4, 6, count, PROBE_INTERVAL_S)
    bound_s = max_s + 3 * PROBE_INTERVAL_S
    assert sim.run_for(
        bound_s, until=lambda: everyone_sees(sim, victim, MemberStatus.DEAD), check_every_s=0.1
    )
    detected_s = sim.now - crashed_at
    record_property("detection_s", detected_s)
    print(f"N={count}: crash seen dead by all after {detected_s:.1f}s (min timeout {min_s:.0f}s)")
    assert detected_s <= bound_s
    # Independent confirmations shrink the Lifeguard timeout from max_s down to its minimum:
    # from the first suspicion, everybody agrees within min_s plus a few probe intervals.
    assert sim.now - suspected_at[0] <= min_s + 3 * PROBE_INTERVAL_S
    assert {d.subject for d in sim.counters.deaths} == {victim}


@pytest.mark.parametrize(
    "count",
    [100, pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.timeout(1800)])],
    ids=lambda n: f"N={n}",
)
def test_a_healed_partition_leaves_identical_membership_and_catalog_everywhere(
    count: int, record_property: RecordProperty
) -> None:
    sim = Simulation(seed=31)
    names = sim.add_converged_cluster(count, zones=("z1", "z2"))
    for i, name in enumerate(names[: count // 5]):
        sim.nodes[name].core.advertise_have(f"sha256:{i:064x}")
    sim.run_for(10.0)
    left, right = names[: count // 2], names[count // 2 :]
    sim.partition(left, right)
    sim.run_for(45.0)
    assert everyone_sees_split(sim, left, right)
    # Both sides keep changing their catalogs while apart.
    for i, name in enumerate(names[count // 2 - 5 : count // 2 + 5]):
        sim.nodes[name].core.advertise_have(f"sha256:{i + 10_000:064x}")
        sim.nodes[name].core.advertise_drop(f"sha256:{0:064x}")
    sim.run_for(5.0)
    sim.heal()
    healed_at = sim.now

    def identical() -> bool:
        if not everyone_knows_everyone(sim):
            return False
        fingerprints = {n.core.catalog.fingerprint(names) for n in sim.live_nodes()}
        return len(fingerprints) == 1

    assert sim.run_for(180.0, until=identical, check_every_s=1.0)
    record_property("heal_s", sim.now - healed_at)
    print(f"N={count}: partition healed, identical after {sim.now - healed_at:.0f}s")
    views = sim.membership_views()
    assert all(set(v.values()) == {MemberStatus.ALIVE} for v in views.values())


def everyone_sees_split(sim: Simulation, left: list[str], right: list[str]) -> bool:
    a, b = sim.nodes[left[0]].core, sim.nodes[right[0]].core
    return a.num_live() == len(left) and b.num_live() == len(right)
