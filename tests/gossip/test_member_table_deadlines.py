"""``MemberTable.next_deadline``: the driver is woken only for timers with work to do.

Suspicion, verification and reap heaps keep entries whose suspicion ended or whose member changed
status since; ``next_deadline`` drops such tops lazily, so a refuted suspicion or a revived member
costs no wake-up later. Measured values are printed (``-s``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from p2preg.gossip import messages as msgs
from p2preg.gossip.config import GossipConfig
from p2preg.gossip.core import GossipCore
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.sim import Simulation

RecordProperty = Callable[[str, object], None]


def _core_with_peers(*peers: str) -> GossipCore:
    core = GossipCore(GossipConfig("me", ("10.0.0.1", 7946)), random.Random(3), 0.0)
    for i, name in enumerate(peers):
        core.table.add_known(msgs.Alive(1, name, f"10.0.0.{i + 2}", 7946, "", "", {}), 0.0)
    return core


def test_next_deadline_skips_the_verifications_of_a_refuted_suspicion() -> None:
    core = _core_with_peers("a", "b")
    table = core.table
    table.on_suspect(msgs.Suspect(1, "a", "b"), 0.0)
    first_verification = table.next_deadline()
    assert first_verification is not None and first_verification > 0.0
    table.on_alive(msgs.Alive(2, "a", "10.0.0.2", 7946, "", "", {}), 0.1)
    assert table.next_deadline() is None


def test_next_deadline_skips_a_suspicion_deadline_that_a_confirmation_moved_earlier() -> None:
    core = _core_with_peers(*(f"p{i}" for i in range(30)))
    table = core.table
    table.on_suspect(msgs.Suspect(1, "p0", "p1"), 0.0)
    st = table.get("p0")
    assert st is not None and st.suspicion is not None
    before = st.suspicion.deadline
    table.on_suspect(msgs.Suspect(1, "p0", "p2"), 0.5)
    after = st.suspicion.deadline
    assert after < before
    # Verifications run first, then the (earlier) deadline; the old one is never a wake-up.
    wakeups = []
    now = 0.5
    while (t := table.next_deadline()) is not None:
        wakeups.append(t)
        now = t
        table.due_verifications(now)
        table.expire(now)
        if st.status == MemberStatus.DEAD:
            break
    assert before not in wakeups
    assert wakeups[-1] == after


def test_a_reap_superseded_by_a_revival_is_not_a_wake_up() -> None:
    core = _core_with_peers("a", "b")
    table = core.table
    table.on_dead(msgs.Dead(1, "a", "b"), 0.0)
    assert table.next_deadline() == core.config.dead_reclaim_s
    table.on_alive(msgs.Alive(2, "a", "10.0.0.2", 7946, "", "", {}), 1.0)
    assert table.next_deadline() is None


def test_a_cluster_with_refuted_suspicions_does_not_wake_for_their_verifications() -> None:
    """Seeded 50-node cluster, five false suspicions refuted at once: over the next 10 simulated
    seconds the cluster wakes as often as when idle (probes), not at the ended suspicions'
    verification and expiry times (that was ~50 extra wake-ups here)."""
    sim = Simulation(seed=11)
    names = sim.add_converged_cluster(50)
    sim.run_for(10.0)
    base = sim.counters.timer_wakeups
    sim.run_for(10.0)
    idle_wakeups = sim.counters.timer_wakeups - base
    for name in names[1:6]:
        # A false accusation that reaches every node; its subject refutes within milliseconds.
        for node in sim.live_nodes():
            node.core.table.on_suspect(msgs.Suspect(0, name, names[0]), sim.now)
    assert all(node.core.table.next_deadline() is not None for node in sim.live_nodes())
    sim.run_for(2.0)  # the refutations spread and their broadcasts drain
    base = sim.counters.timer_wakeups
    sim.run_for(10.0)
    wakeups = sim.counters.timer_wakeups - base
    print(f"timer wake-ups in 10 s: idle {idle_wakeups}, after refuted suspicions {wakeups}")
    assert all(node.core.table.next_deadline() is None for node in sim.live_nodes())
    assert wakeups - idle_wakeups <= 10
