"""SWIM + Lifeguard behaviour of ``GossipCore``, driven by hand or over a tiny in-memory network.

Every test is deterministic: seeded randomness, simulated time, no sockets.
"""

from __future__ import annotations

import random

import pytest

from p2preg.gossip import (
    GossipConfig,
    GossipCore,
    Keyring,
    LocalRefuted,
    MemberJoined,
    MemberLeft,
    MemberStatus,
)
from p2preg.gossip.messages import Alive, Dead, Suspect
from p2preg.gossip.sim import Simulation
from p2preg.gossip.suspicion import suspicion_bounds
from p2preg.gossip.wire import DropReason, MessageType, assemble_packet

DIGEST = "sha256:" + "ab" * 32


def make_core(name: str = "a", **kw: object) -> GossipCore:
    cfg = GossipConfig(name=name, gossip_addr=("10.0.0.1", 7946), http_addr="10.0.0.1:5000", **kw)  # type: ignore[arg-type]
    return GossipCore(cfg, random.Random(1), now=0.0)


def packet(mtype: int, body: bytes) -> bytes:
    return assemble_packet([(mtype, body)], None)


def statuses(sim: Simulation, observer: str) -> dict[str, MemberStatus]:
    return {m.name: m.status for m in sim.nodes[observer].core.members()}


def test_join_through_a_seed_makes_both_nodes_see_each_other_alive() -> None:
    sim = Simulation(seed=1)
    events: list[tuple[str, object]] = []
    sim.on_event = lambda node, event: events.append((node, event))
    sim.add_node("a")
    sim.add_node("b", join=["a"])
    sim.run_for(1.0)
    assert statuses(sim, "a") == {"a": MemberStatus.ALIVE, "b": MemberStatus.ALIVE}
    assert statuses(sim, "b") == {"a": MemberStatus.ALIVE, "b": MemberStatus.ALIVE}
    joined = [(node, e.member.name) for node, e in events if isinstance(e, MemberJoined)]
    assert sorted(joined) == [("a", "b"), ("b", "a")]


def test_a_third_node_is_learned_through_gossip_not_only_from_its_seed() -> None:
    sim = Simulation(seed=2)
    sim.add_node("a")
    sim.add_node("b", join=["a"])
    sim.run_for(1.0)
    sim.add_node("c", join=["b"])
    assert sim.run_for(2.0, until=lambda: sim.nodes["a"].core.num_live() == 3)


def test_probes_are_acked_and_teach_rtt_estimates() -> None:
    sim = Simulation(seed=3, base_latency_s=0.010, latency_per_unit_s=0.0, jitter_s=0.0)
    for name in ("a", "b", "c"):
        sim.add_node(name, join=["a"] if name != "a" else ())
    sim.run_for(60.0)
    core = sim.nodes["a"].core
    assert core.stats.probes >= 55
    assert sim.counters.suspicions == 0
    rtt = core.rtt_estimate_s("b")
    assert rtt is not None and rtt == pytest.approx(0.020, rel=0.35)


def test_indirect_probe_saves_a_node_behind_a_single_broken_link() -> None:
    sim = Simulation(seed=4)
    for name in ("a", "b", "c", "d"):
        sim.add_node(name, join=["a"] if name != "a" else ())
    sim.run_for(2.0)
    sim.cut("a", "b")
    sim.run_for(60.0)
    assert sim.nodes["a"].core.stats.indirect_probes > 0
    assert sim.counters.suspicions == 0
    assert statuses(sim, "a")["b"] == MemberStatus.ALIVE


def test_crashed_node_is_suspected_then_declared_dead_within_its_suspicion_timeout() -> None:
    sim = Simulation(seed=5)
    for name in ("a", "b", "c", "d"):
        sim.add_node(name, join=["a"] if name != "a" else ())
    sim.run_for(3.0)
    sim.crash("d")
    crashed_at = sim.now
    _, max_s = suspicion_bounds(4, 6, 4, 1.0)
    assert sim.run_for(
        max_s + 3.0,
        until=lambda: all(statuses(sim, n)["d"] == MemberStatus.DEAD for n in ("a", "b", "c")),
    )
    assert sim.now - crashed_at <= max_s + 3.0
    assert {r.subject for r in sim.counters.deaths} == {"d"}


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    core = make_core("a")
    core.receive_datagram(packet(MessageType.SUSPECT, Suspect(0, "a", "b").encode()), ("x", 1), 1.0)
    assert core.local_member().incarnation == 1
    events = []
    while (e := core.next_event()) is not None:
        events.append(e)
    assert LocalRefuted(1) in events
    assert core.awareness_score == 1, "being suspected hints that we are the slow one"


def test_old_suspicions_about_us_are_ignored() -> None:
    core = make_core("a")
    core.receive_datagram(packet(MessageType.SUSPECT, Suspect(0, "a", "b").encode()), ("x", 1), 1.0)
    core.receive_datagram(packet(MessageType.SUSPECT, Suspect(0, "a", "c").encode()), ("x", 1), 2.0)
    assert core.local_member().incarnation == 1


def test_alive_with_higher_incarnation_clears_a_suspicion() -> None:
    core = make_core("a")
    alive = Alive(0, "b", "10.0.0.2", 7946, "10.0.0.2:5000", "", {})
    core.receive_datagram(packet(MessageType.ALIVE, alive.encode()), ("x", 1), 0.0)
    core.receive_datagram(packet(MessageType.SUSPECT, Suspect(0, "b", "c").encode()), ("x", 1), 1.0)
    assert core.member("b").status == MemberStatus.SUSPECT  # type: ignore[union-attr]
    refuted = Alive(1, "b", "10.0.0.2", 7946, "10.0.0.2:5000", "", {})
    core.receive_datagram(packet(MessageType.ALIVE, refuted.encode()), ("x", 1), 2.0)
    assert core.member("b").status == MemberStatus.ALIVE  # type: ignore[union-attr]
    core.handle_timer(1000.0)
    assert core.member("b").status == MemberStatus.ALIVE  # type: ignore[union-attr]


def test_graceful_leave_is_seen_as_left_not_dead_and_removes_holdings() -> None:
    sim = Simulation(seed=6)
    for name in ("a", "b", "c"):
        sim.add_node(name, join=["a"] if name != "a" else ())
    sim.run_for(2.0)
    sim.nodes["c"].core.advertise_have(DIGEST)
    sim.run_for(2.0)
    assert [m.name for m in sim.nodes["a"].core.holders(DIGEST)] == ["c"]
    events: list[object] = []
    sim.on_event = lambda node, event: events.append(event)
    sim.leave("c")
    sim.run_for(2.0)
    assert statuses(sim, "a")["c"] == MemberStatus.LEFT
    assert statuses(sim, "b")["c"] == MemberStatus.LEFT
    assert sim.nodes["a"].core.holders(DIGEST) == []
    assert any(isinstance(e, MemberLeft) for e in events)
    assert sim.counters.deaths == []


def test_restarted_node_rejoins_and_its_new_catalog_replaces_the_old() -> None:
    sim = Simulation(seed=7)
    for name in ("a", "b", "c"):
        sim.add_node(name, join=["a"] if name != "a" else ())
    sim.run_for(2.0)
    sim.nodes["c"].core.advertise_have(DIGEST)
    sim.run_for(2.0)
    sim.crash("c")
    sim.run_for(60.0)
    assert statuses(sim, "a")["c"] == MemberStatus.DEAD
    assert sim.nodes["a"].core.holders(DIGEST) == []
    sim.restart("c", join=["b"])
    assert sim.run_for(10.0, until=lambda: statuses(sim, "a")["c"] == MemberStatus.ALIVE)
    assert sim.nodes["c"].core.local_member().incarnation > 0, "it refuted its own death"
    sim.run_for(5.0)
    assert sim.nodes["a"].core.holders(DIGEST) == [], "the new life holds nothing yet"


def test_holders_prefer_same_zone_then_lower_load() -> None:
    sim = Simulation(seed=8)
    sim.add_node("me", zone="z1")
    for name, zone in (("far1", "z2"), ("near1", "z1"), ("near2", "z1"), ("far2", "z2")):
        sim.add_node(name, zone=zone, join=["me"])
    sim.run_for(3.0)
    for name, load in (("far1", 0.0), ("near1", 5.0), ("near2", 1.0), ("far2", 0.0)):
        core = sim.nodes[name].core
        core.advertise_have(DIGEST)
        core.advertise_load(load)
    sim.run_for(3.0)
    me = sim.nodes["me"].core
    # RTT estimates are not known for everyone yet: rank by zone, then RTT, then load.
    ranked = [m.name for m in me.holders(DIGEST)]
    assert set(ranked[:2]) == {"near1", "near2"} and set(ranked[2:]) == {"far1", "far2"}
    sim.run_for(60.0)
    ranked_members = me.holders(DIGEST)
    assert [m.zone for m in ranked_members] == ["z1", "z1", "z2", "z2"]
    rtts = [m.rtt_estimate_s for m in ranked_members[2:]]
    assert all(r is not None for r in rtts) and rtts == sorted(rtts)  # type: ignore[type-var]


def test_holders_ties_are_broken_by_advertised_load() -> None:
    core = make_core("me")
    for i, load in enumerate((3.0, 1.0, 2.0)):
        name = f"p{i}"
        alive = Alive(0, name, f"10.0.1.{i}", 7946, f"10.0.1.{i}:5000", "", {})
        core.receive_datagram(packet(MessageType.ALIVE, alive.encode()), ("x", 1), 0.0)
        from p2preg.gossip.messages import CatalogDelta

        for version, (key, value) in enumerate(((DIGEST, 1), ("", load)), start=1):
            delta = CatalogDelta(name, 0, version, key, value)
            core.receive_datagram(packet(MessageType.CATALOG, delta.encode()), ("x", 1), 0.0)
    assert [m.name for m in core.holders(DIGEST)] == ["p1", "p2", "p0"]
    assert [m.load for m in core.holders(DIGEST)] == [1.0, 2.0, 3.0]


def test_dead_message_from_the_member_itself_means_left() -> None:
    core = make_core("a")
    alive = Alive(0, "b", "10.0.0.2", 7946, "", "", {})
    core.receive_datagram(packet(MessageType.ALIVE, alive.encode()), ("x", 1), 0.0)
    core.receive_datagram(packet(MessageType.DEAD, Dead(0, "b", "b").encode()), ("x", 1), 0.0)
    assert core.member("b").status == MemberStatus.LEFT  # type: ignore[union-attr]


def test_nodes_with_different_cluster_keys_never_merge() -> None:
    sim_keyed = Simulation(seed=9, keyring=Keyring([b"k" * 32]))
    sim_keyed.add_node("a")
    other = Simulation(seed=9, keyring=Keyring([b"j" * 32]))
    b = other.add_node("b")
    request = b.push_pull_request(0.0, join=True)
    a = sim_keyed.nodes["a"].core
    frame = b.encode_stream(request)
    decoder = a.stream_decoder()
    assert decoder.feed(frame) == []
    assert decoder.failed is not None
    assert a.drops.by_reason[DropReason.UNAUTHENTICATED] == 1
    assert a.num_live() == 1


def test_invalid_push_pull_message_is_counted_and_changes_nothing() -> None:
    core = make_core("a")
    before = core.members()
    assert core.handle_push_pull([0, True, [["x"]], []], 1.0) is None
    assert core.handle_push_pull("nonsense", 1.0) is None
    assert core.drops.by_reason[DropReason.MALFORMED] == 2
    assert core.members() == before


def test_identity_too_large_for_a_packet_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="600"):
        make_core("a", meta={f"k{i}": "v" * 100 for i in range(10)})


def test_get_timer_is_none_only_when_nothing_is_pending() -> None:
    core = make_core("a")
    t = core.get_timer()
    assert t is not None and 0.0 <= t <= 30.0
