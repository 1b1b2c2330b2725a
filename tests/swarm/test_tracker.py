"""The owner's tracker (``p2preg.swarm.tracker``): balanced stripe trees of depth ~log(N), one
copy of upload per node, idempotent joins, and no cycles under seeded joins, losses, leaves."""

from __future__ import annotations

import math
import random

import pytest

from p2preg.swarm.pieces import decode_stripes, encode_stripes, stripe_of
from p2preg.swarm.tracker import Tracker, TrackerConfig, TrackerRegistry


def _tracker(n: int, seed: int = 1, **kw: int) -> Tracker:
    t = Tracker("root", TrackerConfig(**kw), random.Random(seed))
    for i in range(n):
        t.join(f"n{i}", now=float(i))
    return t


def _check_trees(t: Tracker) -> None:
    """Every node's parents lead to a depth-0 node with depths one apart: no cycles."""
    for name in t.members():
        for stripe in range(t.config.stripes):
            seen = {name}
            node, depth = name, t.depth(name, stripe)
            while depth > 0:
                parent = t.parents(node)[stripe]
                assert parent not in seen, f"cycle through {parent} in stripe {stripe}"
                assert t.depth(parent, stripe) == depth - 1
                assert node in t.children(parent, stripe)
                seen.add(parent)
                node, depth = parent, depth - 1
            assert not t.parents(node).get(stripe)


def test_every_joiner_gets_one_parent_per_stripe() -> None:
    t = _tracker(50)
    for i in range(50):
        assert set(t.parents(f"n{i}")) == {0, 1}
    assert t.parents("root") == {}
    _check_trees(t)


def test_children_only_in_the_home_stripe_and_at_most_the_budget() -> None:
    t = _tracker(300)
    for i in range(300):
        name = f"n{i}"
        home = t.home(name)
        assert home is not None
        assert len(t.children(name, home)) <= 2
        for stripe in range(2):
            if stripe != home:
                assert t.children(name, stripe) == []
    for stripe in range(2):  # the root: one child per stripe (one copy)
        assert len(t.children("root", stripe)) == 1
    assert t.overflows == 0


def test_homes_are_balanced_and_uploads_total_one_copy_per_node() -> None:
    t = _tracker(301)
    homes = [t.home(f"n{i}") for i in range(301)]
    assert abs(homes.count(0) - homes.count(1)) <= 1
    # Each stripe carries half the blob: a node's upload in copies is its children / 2.
    copies = [sum(len(t.children(f"n{i}", s)) for s in range(2)) / 2 for i in range(301)]
    assert max(copies) <= 1.0
    assert sum(copies) + 1.0 == pytest.approx(301)  # the root uploads one copy too


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_depth_grows_as_log_n(n: int) -> None:
    t = _tracker(n)
    depth = max(t.depth(f"n{i}", s) for i in range(n) for s in range(2))
    assert depth <= math.ceil(math.log2(n)) + 2


def test_a_join_is_idempotent() -> None:
    t = _tracker(20)
    first = t.join("n7", now=100.0)
    assert t.join("n7", now=101.0) == first
    assert len(t) == 21


def test_leaves_sink_below_interior_joiners() -> None:
    t = Tracker("root", rng=random.Random(1))
    t.join("a", now=0)  # home 0; a leaf under the root in stripe 1
    assert t.parents("a") == {0: "root", 1: "root"}
    t.join("b", now=0)  # home 1: takes a's place under the root in stripe 1
    assert t.home("b") == 1
    assert t.parents("b")[1] == "root"
    assert t.parents("a")[1] == "b"
    assert t.moves == 1


def test_a_complete_node_sits_at_depth_zero_of_every_stripe() -> None:
    t = Tracker("root", rng=random.Random(1))
    assert t.join("seed", now=0, complete=True) == {}
    t.join("a", now=0)
    t.join("b", now=0)
    assert {t.parents("a")[0], t.parents("b")[0]} <= {"root", "seed", "a", "b"}
    assert all(t.depth("seed", s) == 0 for s in range(2))
    assert sum(len(t.children("seed", s)) for s in range(2)) >= 1


def test_a_lost_parent_is_replaced_outside_the_subtree_and_takes_no_new_children() -> None:
    t = _tracker(40)
    victim = "n0"  # interior near the top
    home = t.home(victim)
    assert home is not None
    kids = t.children(victim, home)
    assert kids
    child = kids[0]
    subtree = {child}
    todo = [child]
    while todo:
        for k in t.children(todo.pop(), home):
            subtree.add(k)
            todo.append(k)
    new = t.join(child, now=50, lost={home: victim})
    assert new[home] != victim
    assert new[home] not in subtree
    assert child not in t.children(victim, home)
    t.join("late", now=60)
    t.join("later", now=61)
    assert "late" not in t.children(victim, home) and "later" not in t.children(victim, home)
    _check_trees(t)


def test_a_loss_of_a_parent_it_no_longer_has_changes_nothing() -> None:
    t = _tracker(20)
    before = t.parents("n5")
    assert t.join("n5", now=30, lost={0: "nobody"}) == before


def test_a_leave_reattaches_the_children() -> None:
    t = _tracker(40)
    home = t.home("n1")
    assert home is not None
    kids = t.children("n1", home)
    t.leave("n1")
    assert "n1" not in t.members()
    for kid in kids:
        assert t.parents(kid)[home] != "n1"
    _check_trees(t)


def test_a_dead_interior_node_leaves_every_tree_and_no_later_joiner_is_given_it() -> None:
    t = _tracker(30)
    dead = next(n for n in t.members() if (h := t.home(n)) is not None and t.children(n, h))
    kids = {s: t.children(dead, s) for s in range(2)}
    assert t.leave(dead)
    assert dead not in t.members() and not t.leave(dead)
    assert all(dead not in t.parents(n).values() for n in t.members())
    for stripe, moved in kids.items():
        for kid in moved:
            assert t.parents(kid)[stripe] not in (None, dead)
    _check_trees(t)
    for i in range(30):  # later joiners, and re-joins that report the dead node lost
        assert dead not in t.join(f"late{i}", now=100 + i).values()
        for kid in kids[0]:
            assert dead not in t.join(kid, now=200 + i, lost={0: dead}).values()
    _check_trees(t)
    assert not t.leave("root")  # the owner never leaves its own tracker


def test_the_registry_takes_a_leaver_out_of_every_digest_and_counts_it() -> None:
    reg = TrackerRegistry("root", TrackerConfig(), random.Random(3))
    for digest in ("d1", "d2"):
        for i in range(6):
            reg.join(digest, f"n{i}", now=float(i))
    reg.join("d1", "n4", now=7.0, lost={0: reg.parents("d1", "n4")[0]})
    reg.leave("n1")
    reg.leave("nobody")
    assert (reg.joins, reg.losses, reg.leaves) == (13, 1, 2)
    for digest in ("d1", "d2"):
        tracker = reg.get(digest)
        assert tracker is not None and "n1" not in tracker.members()
        assert all("n1" not in tracker.parents(n).values() for n in tracker.members())


@pytest.mark.parametrize("seed", range(8))
def test_no_cycles_under_random_joins_losses_and_leaves(seed: int) -> None:
    rng = random.Random(seed)
    config = TrackerConfig(stripes=rng.choice([2, 3, 4]), children=rng.choice([2, 3, 4]))
    t = Tracker("root", config, random.Random(seed))
    live: list[str] = []
    for step in range(400):
        roll = rng.random()
        if roll < 0.55 or len(live) < 3:
            name = f"n{step}"
            t.join(name, now=step, complete=rng.random() < 0.05)
            live.append(name)
        elif roll < 0.85:
            name = rng.choice(live)
            parents = t.parents(name)
            if parents:
                stripe = rng.choice(sorted(parents))
                new = t.join(name, now=step, lost={stripe: parents[stripe]})
                # Never the lost parent again, but the root: the last resort when every
                # other node is in this one's subtree or closed.
                assert new[stripe] != parents[stripe] or parents[stripe] == "root"
        else:
            name = live.pop(rng.randrange(len(live)))
            t.leave(name)
        _check_trees(t)


def test_past_max_nodes_a_new_node_gets_no_parents_and_the_others_keep_theirs() -> None:
    t = _tracker(7, max_nodes=8)  # the root and n0..n6
    before = {f"n{i}": t.parents(f"n{i}") for i in range(7)}
    assert t.join("flood", now=10.0) == {}
    assert t.join("flood-holder", now=10.0, complete=True) == {}
    assert "flood" not in t.members() and t.refused == 2
    assert {f"n{i}": t.join(f"n{i}", now=11.0) for i in range(7)} == before
    registry = TrackerRegistry("root", TrackerConfig(max_nodes=2))
    registry.join("sha256:d", "a", now=0.0)
    assert registry.join("sha256:d", "b", now=0.0) == {} and registry.refused == 1
    t.leave("n6")  # room again
    assert set(t.join("late", now=12.0)) == {0, 1}
    _check_trees(t)


def test_the_header_form_round_trips_and_refuses_junk() -> None:
    assert encode_stripes({1: "b", 0: "a"}) == "0=a,1=b"
    assert decode_stripes("0=a, 1=node-2.example:5000") == {0: "a", 1: "node-2.example:5000"}
    for bad in ["", "0", "x=a", "0=a,0=b", "99=a", "0=a b", "0=,1=b"]:
        with pytest.raises(ValueError):
            decode_stripes(bad)
    assert [stripe_of(i, 2) for i in range(4)] == [0, 1, 0, 1]
