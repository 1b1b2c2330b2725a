"""Catalog dissemination at scale, in simulation: deltas reach every live node fast."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from p2preg.gossip.messages import STATE_FETCHING, STATE_HAVE
from p2preg.gossip.sim import Simulation
from tests.gossip.test_sim_support import GOSSIP_INTERVAL_S

DIGEST = "sha256:" + "c" * 64

RecordProperty = Callable[[str, object], None]


@pytest.mark.parametrize("count", [1000], ids=lambda n: f"N={n}")
def test_a_have_delta_reaches_every_live_node_within_3_log2_n_gossip_rounds(
    count: int, record_property: RecordProperty
) -> None:
    sim = Simulation(seed=21)
    names = sim.add_converged_cluster(count)
    sim.run_for(3.0)
    crashed = names[1:11]
    for name in crashed:
        sim.crash(name)
    origin = sim.nodes[names[-1]]
    origin.core.advertise_have(DIGEST)
    sim.run_for(0.0)
    started = sim.now
    bound = 3 * math.ceil(math.log2(count))

    def everywhere(state: int) -> bool:
        return all(
            n is origin or n.core.catalog.nodes_with(DIGEST, state) == {origin.name}
            for n in sim.live_nodes()
        )

    assert sim.run_for(bound * GOSSIP_INTERVAL_S, until=lambda: everywhere(STATE_HAVE),
                       check_every_s=GOSSIP_INTERVAL_S)  # fmt: skip
    rounds = math.ceil((sim.now - started) / GOSSIP_INTERVAL_S)
    record_property("have_rounds", rounds)
    print(f"N={count}: have delta everywhere after {rounds} rounds (bound {bound})")
    assert rounds <= bound
    assert all(n.core.holders(DIGEST)[0].name == origin.name for n in sim.live_nodes()
               if n is not origin)  # fmt: skip


def test_fetching_then_have_then_drop_converge_in_order() -> None:
    sim = Simulation(seed=22)
    names = sim.add_converged_cluster(200)
    sim.run_for(2.0)
    core = sim.nodes[names[0]].core
    observer = sim.nodes[names[-1]].core
    core.advertise_fetching(DIGEST)
    sim.run_for(3.0)
    assert [m.name for m in observer.fetchers(DIGEST)] == [names[0]]
    assert observer.holders(DIGEST) == []
    core.advertise_have(DIGEST)
    sim.run_for(3.0)
    assert observer.fetchers(DIGEST) == [] and len(observer.holders(DIGEST)) == 1
    core.advertise_drop(DIGEST)
    sim.run_for(3.0)
    assert all(n.core.catalog.nodes_with(DIGEST, STATE_HAVE) == set() for n in sim.live_nodes())
    assert all(n.core.catalog.nodes_with(DIGEST, STATE_FETCHING) == set() for n in sim.live_nodes())


def test_a_dead_holder_disappears_from_every_holder_list() -> None:
    sim = Simulation(seed=23)
    names = sim.add_converged_cluster(100)
    holder = names[5]
    sim.nodes[holder].core.advertise_have(DIGEST)
    sim.run_for(3.0)
    assert all(len(n.core.holders(DIGEST)) == 1 for n in sim.live_nodes() if n.name != holder)
    sim.crash(holder)
    sim.run_for(60.0)
    assert all(n.core.holders(DIGEST) == [] for n in sim.live_nodes())


def test_anti_entropy_repairs_deltas_lost_to_a_partition() -> None:
    sim = Simulation(seed=24)
    names = sim.add_converged_cluster(50)
    sim.run_for(2.0)
    isolated = names[-1]
    sim.partition(names[:-1], [isolated])
    sim.nodes[names[0]].core.advertise_have(DIGEST)
    sim.run_for(2.0)  # far shorter than a suspicion: nobody is declared dead
    sim.heal()
    iso = sim.nodes[isolated].core
    assert iso.holders(DIGEST) == []
    assert sim.run_for(300.0, until=lambda: len(iso.holders(DIGEST)) == 1, check_every_s=1.0)
    assert sim.counters.deaths == []
