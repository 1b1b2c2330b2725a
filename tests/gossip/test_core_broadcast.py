"""The transmit-limited broadcast queue."""

from __future__ import annotations

import pytest

from p2preg.gossip.broadcast import BroadcastQueue, retransmit_limit


@pytest.mark.parametrize(
    ("mult", "nodes", "limit"),
    [(4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (4, 1000, 16), (3, 300, 9)],
)
def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_1(
    mult: int, nodes: int, limit: int
) -> None:
    assert retransmit_limit(mult, nodes) == limit


def test_each_update_is_sent_exactly_the_retransmit_limit() -> None:
    q = BroadcastQueue(retransmit_mult=2)
    q.queue("a", 5, b"x" * 10)
    sends = 0
    while q.get(1000, 2, num_nodes=10):  # limit 2*ceil(log10 11) = 4
        sends += 1
    assert sends == 4 and len(q) == 0


def test_least_sent_first_then_newest() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.queue("old", 5, b"o")
    assert q.get(100, 2, 10) == [(5, b"o")]  # "old" now sent once
    q.queue("new1", 5, b"1")
    q.queue("new2", 5, b"2")
    # Room for two parts only: the never-sent ones go first, newest first.
    assert q.get(6, 2, 10) == [(5, b"2"), (5, b"1")]
    # Now all three were sent once: newest first again.
    assert q.get(3, 2, 10) == [(5, b"2")]


def test_newer_update_about_same_subject_replaces_older() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.queue(("m", "n1"), 6, b"suspect")
    q.queue(("m", "n1"), 5, b"alive")
    assert len(q) == 1
    assert q.get(100, 2, 10) == [(5, b"alive")]


def test_updates_that_do_not_fit_stay_queued() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.queue("big", 5, b"b" * 500)
    q.queue("small", 5, b"s")
    assert q.get(100, 2, 10) == [(5, b"s")]
    assert q.has("big")
    assert q.get(600, 2, 10)[0] == (5, b"b" * 500)
