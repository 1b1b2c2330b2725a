"""Helpers shared by the simulation tests (no tests here): join storms, convergence checks."""

from __future__ import annotations

from p2preg.gossip.member import MemberStatus
from p2preg.gossip.sim import Simulation

GOSSIP_INTERVAL_S = 0.2
PROBE_INTERVAL_S = 1.0


def join_storm(sim: Simulation, count: int, spread_s: float) -> list[str]:
    """Start ``count`` nodes within ``spread_s``; each joins one random node already started."""
    names = [f"n{i}" for i in range(count)]
    sim.add_node(names[0])
    step = spread_s / max(1, count - 1)
    for i in range(1, count):
        sim.run_for(step)
        sim.add_node(names[i], join=[names[sim.rng.randrange(i)]])
    return names


def everyone_sees(sim: Simulation, subject: str, status: MemberStatus) -> bool:
    for node in sim.live_nodes():
        member = node.core.member(subject)
        if member is None or member.status != status:
            return False
    return True


def everyone_knows_everyone(sim: Simulation) -> bool:
    """Exact check: every live node lists exactly the live nodes as alive."""
    live = {n.name for n in sim.live_nodes()}
    for node in sim.live_nodes():
        alive = {m.name for m in node.core.members() if m.status == MemberStatus.ALIVE}
        if alive != live:
            return False
    return True
