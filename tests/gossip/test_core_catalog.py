"""The catalog: versioned per-node state, the digest index, and push-pull repair."""

from __future__ import annotations

from p2preg.gossip.catalog import Catalog
from p2preg.gossip.messages import LOAD_KEY, STATE_DROPPED, STATE_FETCHING, STATE_HAVE

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def exchange(a: Catalog, b: Catalog) -> None:
    """A three-leg Scuttlebutt exchange: a's versions -> b's entries + versions -> a's entries."""
    b.apply_entries(a.entries_newer_than(b.versions()))
    a.apply_entries(b.entries_newer_than(a.versions()))


def test_local_changes_take_consecutive_versions_and_no_ops_take_none() -> None:
    c = Catalog("a", generation=1)
    d1 = c.set_local(D1, STATE_FETCHING)
    d2 = c.set_local(D1, STATE_HAVE)
    assert d1 is not None and d2 is not None
    assert (d1.version, d2.version) == (1, 2)
    assert c.set_local(D1, STATE_HAVE) is None
    assert c.set_local(D2, STATE_DROPPED) is None  # never had it
    assert c.local_version == 2


def test_remote_delta_updates_the_digest_index() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    delta = a.set_local(D1, STATE_HAVE)
    assert delta is not None and b.apply(delta)
    assert b.nodes_with(D1) == {"a"}
    drop = a.set_local(D1, STATE_DROPPED)
    assert drop is not None and b.apply(drop)
    assert b.nodes_with(D1) == set()
    assert not b.apply(delta), "an older version never overwrites a newer one"
    assert b.nodes_with(D1) == set()


def test_fetching_and_have_are_indexed_separately() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    delta = a.set_local(D1, STATE_FETCHING)
    assert delta is not None
    b.apply(delta)
    assert b.nodes_with(D1, STATE_FETCHING) == {"a"} and b.nodes_with(D1) == set()


def test_watermark_advances_only_over_contiguous_versions() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    deltas = [a.set_local(d, STATE_HAVE) for d in (D1, D2, D3)]
    assert all(d is not None for d in deltas)
    first, _lost, third = deltas
    assert first is not None and third is not None
    b.apply(first)
    b.apply(third)  # version 2 was lost
    assert ["a", 1, 1] in b.versions()
    # Push-pull sends exactly what b lacks: versions above its watermark.
    blocks = a.entries_newer_than(b.versions())
    assert [[row[0], row[1]] for row in blocks[0][3]] == [[2, D2], [3, D3]]
    b.apply_entries(blocks)
    assert ["a", 1, 3] in b.versions()
    assert b.nodes_with(D2) == {"a"}


def test_push_pull_sends_nothing_when_replicas_agree() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    a.set_local(D1, STATE_HAVE)
    b.set_local(D2, STATE_HAVE)
    exchange(a, b)
    assert a.entries_newer_than(b.versions()) == []
    assert b.entries_newer_than(a.versions()) == []
    assert a.fingerprint(["a", "b"]) == b.fingerprint(["a", "b"])


def test_anti_entropy_carries_third_party_state() -> None:
    a, b, c = Catalog("a", 1), Catalog("b", 1), Catalog("c", 1)
    a.set_local(D1, STATE_HAVE)
    exchange(a, b)
    exchange(b, c)
    assert c.nodes_with(D1) == {"a"}


def test_a_restarted_node_with_a_newer_generation_replaces_its_old_state() -> None:
    old, b = Catalog("a", 1), Catalog("b", 1)
    old.set_local(D1, STATE_HAVE)
    old.set_local(D2, STATE_HAVE)
    exchange(old, b)
    new = Catalog("a", 2)
    delta = new.set_local(D3, STATE_HAVE)
    assert delta is not None and delta.version == 1
    assert b.apply(delta)
    assert b.nodes_with(D1) == set() and b.nodes_with(D3) == {"a"}
    stale = old.set_local(D1, STATE_FETCHING)
    assert stale is not None and not b.apply(stale)


def test_forget_removes_a_node_from_every_holder_set() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    a.set_local(D1, STATE_HAVE)
    a.set_local(D2, STATE_FETCHING)
    exchange(a, b)
    assert sorted(b.forget("a")) == [D1, D2]
    assert b.nodes_with(D1) == set() and b.nodes_with(D2, STATE_FETCHING) == set()


def test_load_is_versioned_state_too() -> None:
    a, b = Catalog("a", 1), Catalog("b", 1)
    a.set_local(LOAD_KEY, 3.5)
    exchange(a, b)
    assert b.load_of("a") == 3.5
    assert b.digests_of("a") == {}
