"""Per-node gossip traffic stays bounded as the cluster grows from 100 to 1,000 nodes."""

from __future__ import annotations

from collections.abc import Callable

from p2preg.gossip.sim import Simulation

WINDOW_S = 20.0

RecordProperty = Callable[[str, object], None]


def udp_bytes_per_node_s(count: int) -> tuple[float, float]:
    """(idle, with catalog churn of one new digest per second cluster-wide), steady state."""
    sim = Simulation(seed=51)
    names = sim.add_converged_cluster(count)
    sim.run_for(20.0)
    marks = sim.byte_marks()
    sim.run_for(WINDOW_S)
    idle = sim.udp_bytes_per_node_s(marks, WINDOW_S)
    marks = sim.byte_marks()
    for second in range(int(WINDOW_S)):
        sim.nodes[names[(second * 37) % count]].core.advertise_have(f"sha256:{second:064x}")
        sim.run_for(1.0)
    return idle, sim.udp_bytes_per_node_s(marks, WINDOW_S)


def test_per_node_gossip_bytes_per_second_stay_bounded_from_100_to_1000_nodes(
    record_property: RecordProperty,
) -> None:
    idle_100, churn_100 = udp_bytes_per_node_s(100)
    idle_1000, churn_1000 = udp_bytes_per_node_s(1000)
    record_property("idle", {"100": idle_100, "1000": idle_1000})
    record_property("churn", {"100": churn_100, "1000": churn_1000})
    print(f"UDP B/node/s idle: N=100 {idle_100:.0f}, N=1000 {idle_1000:.0f}; "
          f"1 digest/s: N=100 {churn_100:.0f}, N=1000 {churn_1000:.0f}")  # fmt: skip
    # 10x the nodes: per-node traffic may grow like log N (retransmit limit), never like N.
    assert idle_1000 <= 1.5 * idle_100
    assert churn_1000 <= 2.0 * churn_100
    # Idle: one probe and one ack per second, about 100 bytes each way.
    assert idle_1000 < 250
    # Each catalog delta costs every node about retransmit_limit * ~90 bytes.
    assert churn_1000 - idle_1000 < 16 * 120
