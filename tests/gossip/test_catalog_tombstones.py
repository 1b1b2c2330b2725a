"""Catalog tombstone collection: tombstones go away after a grace, floors keep replicas correct.

A drop writes a tombstone; its owner and every replica remove it once it is older than the grace
and raise that node's *floor*. A replica whose watermark is below a sender's floor gets the
sender's full state of that node and forgets the entries the sender no longer has.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from p2preg.gossip.catalog import Catalog
from p2preg.gossip.config import GossipConfig
from p2preg.gossip.core import GossipCore
from p2preg.gossip.events import CatalogChanged
from p2preg.gossip.messages import (
    PP_FINAL,
    PP_REPLY,
    PP_REQUEST,
    STATE_DROPPED,
    STATE_HAVE,
    CatalogDelta,
    parse_push_pull,
)
from p2preg.gossip.sim import Simulation

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
GRACE_S = 3600.0
BUDGET = 1000

RecordProperty = Callable[[str, object], None]


def exchange(initiator: Catalog, responder: Catalog) -> None:
    """A three-leg push-pull between two catalogs: versions -> entries + versions -> entries."""
    responder.apply_entries(initiator.entries_newer_than(responder.versions()))
    initiator.apply_entries(responder.entries_newer_than(initiator.versions()))


def one_way(sender: Catalog, receiver: Catalog) -> list[tuple[str, str, float]]:
    """What ``receiver`` learns from ``sender`` in one push-pull leg (the changes it applies)."""
    return receiver.apply_entries(sender.entries_newer_than(receiver.versions()))


def collect(*catalogs: Catalog, at: float) -> None:
    for catalog in catalogs:
        while catalog.collect_tombstones(at, GRACE_S, BUDGET):
            pass


def delta(d: CatalogDelta | None) -> CatalogDelta:
    assert d is not None
    return d


def held_then_dropped(
    owner: Catalog, *replicas: Catalog, seen_by: tuple[Catalog, ...] = ()
) -> tuple[CatalogDelta, CatalogDelta]:
    """At time 0, ``owner`` advertises D1 to every replica, then drops it; only the replicas in
    ``seen_by`` hear of the drop (the others are cut off during the drop and the whole grace)."""
    have = delta(owner.set_local(D1, STATE_HAVE))
    for replica in replicas:
        replica.apply(have)
    drop = delta(owner.set_local(D1, STATE_DROPPED))
    for replica in seen_by:
        assert replica.apply(drop)
    collect(owner, *replicas, at=0.0)  # stamps the tombstones
    return have, drop


# -- the owner ------------------------------------------------------------------------------------


def test_a_dropped_digest_tombstone_disappears_from_its_owner_after_the_grace() -> None:
    a = Catalog("a", 1)
    _, drop = held_then_dropped(a)
    collect(a, at=GRACE_S - 1)
    assert a.state_of("a", D1) == STATE_DROPPED, "kept during the grace"
    collect(a, at=GRACE_S)
    assert a.state_of("a", D1) is None
    assert a.entry_count() == 0 and a.tombstone_count() == 0
    assert a.floor_of("a") == drop.version
    assert a.tombstones_collected == 1


def test_a_live_entry_is_never_collected() -> None:
    a = Catalog("a", 1)
    a.set_local(D1, STATE_HAVE)
    a.set_local(D2, STATE_HAVE)
    a.set_local(D2, STATE_DROPPED)
    a.set_local(D2, STATE_HAVE)  # re-have before the grace: its tombstone is overwritten
    collect(a, at=0.0)
    collect(a, at=10 * GRACE_S)
    assert a.digests_of("a") == {D1: STATE_HAVE, D2: STATE_HAVE}
    assert a.floor_of("a") == 0


def test_collection_examines_at_most_the_budget_per_call() -> None:
    a = Catalog("a", 1)
    digests = [f"sha256:{i:064x}" for i in range(10)]
    for d in digests:
        a.set_local(d, STATE_HAVE)
        a.set_local(d, STATE_DROPPED)
    a.collect_tombstones(0.0, GRACE_S, 4)
    assert a.collect_tombstones(GRACE_S, GRACE_S, 4) is True
    assert a.tombstone_count() == 6
    assert a.collect_tombstones(GRACE_S, GRACE_S, 4) is True
    assert a.collect_tombstones(GRACE_S, GRACE_S, 4) is False
    assert a.tombstone_count() == 0


# -- replicas -------------------------------------------------------------------------------------


def test_a_replica_that_saw_the_tombstone_converges_and_collects_it_too() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    _, drop = held_then_dropped(a, b, seen_by=(b,))
    assert b.nodes_with(D1) == set()
    collect(a, b, at=GRACE_S + 1)
    assert b.state_of("a", D1) is None and b.floor_of("a") == drop.version
    exchange(a, b)
    exchange(b, a)
    assert b.nodes_with(D1) == set() and b.full_resyncs_applied == 0, "nothing was missed"


def test_a_replica_that_missed_the_tombstone_forgets_the_holder_after_one_owner_push_pull() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    held_then_dropped(a, b)  # b is partitioned away during the drop and the whole grace
    collect(a, b, at=GRACE_S + 1)
    assert b.nodes_with(D1) == {"a"}
    changes = one_way(a, b)
    assert b.nodes_with(D1) == set()
    assert ("a", D1, STATE_DROPPED) in changes, "routing is told that the holder is gone"
    assert b.floor_of("a") == a.floor_of("a")
    assert b.fingerprint(["a"]) == a.fingerprint(["a"])


def test_the_owner_learns_it_must_resync_a_replica_when_the_replica_initiates() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    held_then_dropped(a, b)
    collect(a, b, at=GRACE_S + 1)
    exchange(b, a)  # b initiates: a replies with its full state of "a"
    assert b.nodes_with(D1) == set()


def test_a_replica_that_missed_the_tombstone_converges_via_any_replica_with_a_newer_floor() -> None:
    a, b, c = Catalog("a", 1), Catalog("b", 1), Catalog("c", 1)
    _, drop = held_then_dropped(a, b, c, seen_by=(c,))
    collect(a, b, c, at=GRACE_S + 1)  # c collected the tombstone; b never saw it
    assert c.floor_of("a") == drop.version
    exchange(b, c)  # the owner is unreachable
    assert b.nodes_with(D1) == set()
    assert c.nodes_with(D1) == set()


def test_a_floor_adopted_through_a_resync_is_passed_on() -> None:
    a, b, c = Catalog("a", 1), Catalog("b", 1), Catalog("c", 1)
    held_then_dropped(a, b, c)
    collect(a, b, c, at=GRACE_S + 1)
    exchange(b, a)  # b is resynced by the owner and adopts its floor
    exchange(c, b)  # c never spoke to the owner
    assert c.nodes_with(D1) == set()
    assert c.floor_of("a") == a.floor_of("a")


def test_an_incremental_replica_is_not_resynced() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    held_then_dropped(a, b, seen_by=(b,))
    a.set_local(D2, STATE_HAVE)
    collect(a, at=GRACE_S + 1)
    blocks = a.entries_newer_than(b.versions())
    assert [len(block) for block in blocks] == [4], "previous-format block, only what b lacks"
    assert [row[1] for row in blocks[0][3]] == [D2]


def test_a_resync_keeps_entries_newer_than_the_senders_watermark() -> None:
    a, b, c = Catalog("a", 1), Catalog("b", 1), Catalog("c", 1)
    held_then_dropped(a, b, c, seen_by=(c,))
    collect(a, b, c, at=GRACE_S + 1)
    newer = delta(a.set_local(D2, STATE_HAVE))
    assert b.apply(newer)  # b heard the newest delta, but not the drop: its watermark is stuck
    exchange(b, c)  # c is behind the owner and does not know D2
    assert b.nodes_with(D1) == set()
    assert b.nodes_with(D2) == {"a"}, "an entry above the sender's watermark survives the resync"


def test_a_delayed_old_have_does_not_resurrect_a_collected_entry() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    have, drop = held_then_dropped(a, b, seen_by=(b,))
    collect(a, b, at=GRACE_S + 1)
    assert not b.apply(have), "a replayed delta below the floor is stale"
    assert b.nodes_with(D1) == set()
    stale_block = [["a", 1, drop.version, [[have.version, D1, STATE_HAVE]]]]
    assert b.apply_entries(stale_block) == []
    assert b.nodes_with(D1) == set()


def test_a_re_have_after_collection_reaches_every_replica() -> None:
    a, b, fresh = Catalog("a", 1), Catalog("b", 1), Catalog("fresh", 1)
    held_then_dropped(a, b, seen_by=(b,))
    collect(a, b, at=GRACE_S + 1)
    again = delta(a.set_local(D1, STATE_HAVE))
    assert again.version > a.floor_of("a")
    assert b.apply(again)
    assert b.nodes_with(D1) == {"a"}
    exchange(fresh, a)
    assert fresh.nodes_with(D1) == {"a"}


def test_an_out_of_order_tombstone_is_collected_only_once_the_gap_is_filled() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    lost = delta(a.set_local(D1, STATE_HAVE))
    a.set_local(D2, STATE_HAVE)
    drop = delta(a.set_local(D2, STATE_DROPPED))
    b.apply(drop)  # versions 1 and 2 have not arrived: b's watermark is 0
    collect(b, at=0.0)
    collect(b, at=GRACE_S + 1)
    assert b.state_of("a", D2) == STATE_DROPPED and b.floor_of("a") == 0
    b.apply(lost)
    exchange(b, a)  # fills the gap
    collect(b, at=2 * GRACE_S)  # re-stamped when it was found out of order: a new grace runs
    assert b.state_of("a", D2) == STATE_DROPPED
    collect(b, at=3 * GRACE_S)
    assert b.state_of("a", D2) is None and b.floor_of("a") == drop.version
    assert b.nodes_with(D1) == {"a"}


def test_a_forgotten_node_leaves_nothing_to_collect() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    held_then_dropped(a, b, seen_by=(b,))
    b.forget("a")
    collect(b, at=GRACE_S + 1)
    assert b.entry_count() == 0 and b.tombstones_collected == 0


def test_a_newer_generation_replaces_a_resynced_state_as_before() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    held_then_dropped(a, b)
    collect(a, b, at=GRACE_S + 1)
    restarted = Catalog("a", 2)
    restarted.set_local(D3, STATE_HAVE)
    exchange(b, restarted)
    assert b.nodes_with(D1) == set() and b.nodes_with(D3) == {"a"}
    assert b.floor_of("a") == 0


# -- wire compatibility ---------------------------------------------------------------------------


def test_entries_blocks_of_the_previous_format_decode_with_floor_zero() -> None:
    blocks = [["a", 1, 2, [[1, D1, STATE_HAVE], [2, D2, STATE_HAVE]]]]
    old_final = [PP_FINAL, blocks]
    assert parse_push_pull(old_final) == old_final
    b = Catalog("b", 1)
    b.set_local(D3, STATE_HAVE)
    b.apply_entries(blocks)
    assert b.nodes_with(D1) == {"a"} and b.floor_of("a") == 0 and b.full_resyncs_applied == 0


def test_a_floor_above_the_blocks_watermark_is_malformed() -> None:
    bad = [PP_FINAL, [["a", 1, 2, [], 3]]]
    assert parse_push_pull(bad) is None
    assert parse_push_pull([PP_FINAL, [["a", 1, 2, [], -1]]]) is None
    assert parse_push_pull([PP_FINAL, [["a", 1, 2, [], "x"]]]) is None


def test_trailing_fields_from_a_newer_version_are_ignored() -> None:
    request = [PP_REQUEST, False, [], [["a", 1, 5, 3, "future"]], "future"]
    assert parse_push_pull(request) == request
    reply = [PP_REPLY, [], [], [["a", 1, 2, [[2, D1, STATE_HAVE]], 1, "future"]], {"x": 1}]
    assert parse_push_pull(reply) == reply
    assert parse_push_pull([PP_REQUEST, False, [], [], *range(20)]) is None, "bounded"


def test_the_core_answers_an_old_format_request_and_applies_an_old_format_reply() -> None:
    a = make_core("a")
    a.advertise_have(D1)
    reply = a.handle_push_pull([PP_REQUEST, False, [], [["a", 0, 0]]], 0.0)
    assert reply is not None and reply[3] == [["a", 0, 1, [[1, D1, STATE_HAVE]]]]
    b = make_core("b")
    assert b.handle_push_pull([PP_FINAL, reply[3]], 0.0) is None
    assert b.catalog.nodes_with(D1) == {"a"}
    assert b.drops.total == 0


# -- the core: timer and push-pull ----------------------------------------------------------------


def make_core(name: str, **overrides: object) -> GossipCore:
    settings: dict[str, Any] = {"tombstone_grace_s": 100.0, "tombstone_collect_interval_s": 10.0}
    settings.update(overrides)
    cfg = GossipConfig(name=name, gossip_addr=("127.0.0.1", 7946 + ord(name[0])), **settings)
    return GossipCore(cfg, random.Random(name), 0.0)


def run_timers(core: GossipCore, until: float) -> None:
    while (t := core.get_timer()) is not None and t <= until:
        core.handle_timer(t)


def push_pull(initiator: GossipCore, responder: GossipCore, now: float) -> None:
    reply = responder.handle_push_pull(initiator.push_pull_request(now), now)
    assert reply is not None
    final = initiator.handle_push_pull(reply, now)
    if final is not None:
        assert responder.handle_push_pull(final, now) is None


def test_the_core_collects_its_tombstones_on_its_own_timer() -> None:
    a = make_core("a")
    a.advertise_have(D1)
    a.advertise_drop(D1)
    run_timers(a, 99.0)
    assert a.catalog.state_of("a", D1) == STATE_DROPPED
    run_timers(a, 100.0 + 2 * 10.0)
    assert a.catalog.state_of("a", D1) is None


def test_infinite_grace_keeps_tombstones_and_schedules_no_collection() -> None:
    a = make_core("a", tombstone_grace_s=float("inf"))
    a.advertise_have(D1)
    a.advertise_drop(D1)
    run_timers(a, 10_000.0)
    assert a.catalog.state_of("a", D1) == STATE_DROPPED


def test_a_core_that_missed_a_drop_emits_a_change_when_the_resync_removes_the_holder() -> None:
    a, b = make_core("a"), make_core("b")
    a.advertise_have(D1)
    push_pull(b, a, 0.0)
    assert b.catalog.nodes_with(D1) == {"a"}
    while b.next_event() is not None:
        pass
    a.advertise_drop(D1)  # the delta never reaches b
    run_timers(a, 200.0)
    run_timers(b, 200.0)
    push_pull(b, a, 200.0)
    assert b.catalog.nodes_with(D1) == set()
    events = []
    while (event := b.next_event()) is not None:
        events.append(event)
    assert CatalogChanged("a", D1, None) in events


# -- simulation -----------------------------------------------------------------------------------


def test_churning_cluster_keeps_a_bounded_catalog_and_every_view_matches_the_truth(
    record_property: RecordProperty,
) -> None:
    """16 nodes, 2 simulated hours of have/drop churn with 2% loss; one node is cut off for 30
    minutes (longer than the 10-minute grace) and comes back. Catalogs stay small: without
    collection every node would hold one entry per digest ever advertised (~380 here)."""
    nodes, hold_max, step_s, grace_s = 16, 4, 10.0, 600.0
    cfg = GossipConfig(
        name="template",
        gossip_addr=("0.0.0.0", 0),
        tombstone_grace_s=grace_s,
        tombstone_collect_interval_s=30.0,
        emit_catalog_events=False,
        probe_interval_s=5.0,
        probe_timeout_s=2.0,
        gossip_interval_s=1.0,
        push_pull_interval_s=60.0,
    )
    sim = Simulation(seed=5, loss=0.02, config=cfg)
    names = sim.add_converged_cluster(nodes)
    rng = random.Random(9)
    truth: dict[str, list[str]] = {name: [] for name in names}
    advertised: list[str] = []
    peak_entries = 0
    isolated = names[-1]
    for step in range(int(2 * 3600 / step_s)):
        if step * step_s == 1800.0:
            sim.partition(names[:-1], [isolated])
        elif step * step_s == 3600.0:
            sim.heal()
        sim.run_for(step_s)
        name = rng.choice(names)
        core, held = sim.nodes[name].core, truth[name]
        if len(held) >= hold_max or (held and rng.random() < 0.4):
            core.advertise_drop(held.pop(rng.randrange(len(held))))
        else:
            digest = f"sha256:{len(advertised) + 1:064x}"
            advertised.append(digest)
            held.append(digest)
            core.advertise_have(digest)
        peak_entries = max(peak_entries, *(n.core.catalog.entry_count() for n in sim.live_nodes()))

    def every_view_matches_the_truth() -> bool:
        for node in sim.live_nodes():
            for digest in advertised:
                holders = {name for name in names if digest in truth[name]}
                if node.core.catalog.nodes_with(digest, STATE_HAVE) != holders:
                    return False
        return True

    assert sim.run_for(300.0, until=every_view_matches_the_truth, check_every_s=10.0)
    resyncs = sum(n.core.catalog.full_resyncs_applied for n in sim.live_nodes())
    record_property("peak_entries_per_node", peak_entries)
    record_property("digests_advertised", len(advertised))
    record_property("full_resyncs", resyncs)
    print(f"peak {peak_entries} entries/node for {len(advertised)} digests; {resyncs} resyncs")
    assert len(advertised) > 300
    # Live holdings (<= 16 * 4) plus the drops of the last grace (~0.05/s * 12 min ~ 35).
    assert peak_entries <= 130
    assert resyncs > 0, "the isolated node missed collected tombstones and was resynced"
