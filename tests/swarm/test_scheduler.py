"""The download scheduler: its rules (module docstring of ``p2preg.swarm.scheduler``) one by one."""

from __future__ import annotations

import random

from p2preg.swarm.pieces import Have, Layout
from p2preg.swarm.scheduler import (
    ROLE_FETCHER,
    ROLE_HOLDER,
    ROLE_MEMBER,
    ROLE_OWNER,
    Request,
    Scheduler,
    SchedulerConfig,
)

LAYOUT = Layout(size=40, piece_bytes=4)  # 10 pieces


def sched(peers: dict[str, str], owner: str | None = "o", layout: Layout = LAYOUT,
          seed: int = 1, **kw: int | float) -> Scheduler:
    kw.setdefault("tracker", False)  # rules 1-6 alone; rule 0's tests turn it on
    s = Scheduler(layout, self_name="me", config=SchedulerConfig(**kw),  # type: ignore[arg-type]
                  rng=random.Random(seed))
    s.set_peers(peers, owner)
    return s


def test_with_nothing_known_it_long_polls_the_owner_up_to_per_peer() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER}, per_peer=2)
    assert s.next_requests(0) == [Request("o", 0), Request("o", 1)]
    assert s.next_requests(0) == []


def test_pieces_known_at_a_peer_are_asked_lowest_first_within_in_order_pieces() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER}, per_peer=4, max_requests=3)
    s.on_availability("a", Have.of(0, [3, 5, 7]), 0)
    reqs = s.next_requests(0)
    assert [(r.peer, r.piece) for r in reqs] == [("a", 3), ("a", 5), ("a", 7)]


def test_past_in_order_pieces_the_rarest_comes_first() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER, "c": ROLE_FETCHER},
              in_order_pieces=1, per_peer=4, max_requests=2)
    s.on_availability("a", Have.of(0, [1, 2, 3]), 0)
    s.on_availability("b", Have.of(0, [2, 3]), 0)
    s.on_availability("c", Have.of(0, [2]), 0)
    # piece 1 is in order; then piece 3 (2 copies) before piece 2 (3 copies)
    assert [r.piece for r in s.next_requests(0)] == [1, 3]


def test_max_requests_and_per_peer_limit_what_is_in_flight() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=2,
              max_requests=3)
    reqs = s.next_requests(0)
    assert len(reqs) == 3
    assert max(sum(r.peer == p for r in reqs) for p in ("a", "b")) == 2
    assert len({r.piece for r in reqs}) == 3


def test_fetchers_are_preferred_over_holders_and_the_owner() -> None:
    s = sched({"o": ROLE_OWNER, "h": ROLE_HOLDER, "f": ROLE_FETCHER}, per_peer=1)
    s.on_availability("o", Have(10), 0)
    s.on_availability("f", Have(1), 0)
    assert s.next_requests(0)[0] == Request("f", 0)


def test_load_spreads_over_peers_with_the_fewest_requests() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=3,
              max_requests=4)
    peers = [r.peer for r in s.next_requests(0)]
    assert sorted(peers) == ["a", "a", "b", "b"]


def test_the_window_bounds_the_pieces_asked_for() -> None:
    s = sched({"a": ROLE_HOLDER}, window_pieces=3, per_peer=9, max_requests=9)
    assert [r.piece for r in s.next_requests(0)] == [0, 1, 2]
    s.on_piece("a", 1, 1)
    s.on_piece("a", 2, 1)
    assert s.next_requests(1) == []  # piece 0 still holds the window
    s.on_piece("a", 0, 2)
    assert s.prefix == 3
    assert [r.piece for r in s.next_requests(2)] == [3, 4, 5]


def test_have_reports_the_prefix_and_buffered_pieces() -> None:
    s = sched({"a": ROLE_HOLDER}, per_peer=9, max_requests=9)
    s.next_requests(0)
    s.on_piece("a", 0, 1)
    s.on_piece("a", 2, 1)
    assert s.have() == Have(1, frozenset({2}))
    assert s.missing() == [1, 3, 4, 5, 6, 7, 8, 9]


def test_busy_backs_off_that_peer_for_that_piece_and_tries_the_hints() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER},
              per_peer=1, max_requests=2, busy_backoff_s=0.5, missing_backoff_s=0.05)
    assert s.next_requests(0) == [Request("o", 0)]
    s.on_busy("o", 0, ["a", "zz"], 0.1)
    # the hint for piece 0, and the owner again, for the next piece (not backed off for it)
    assert s.next_requests(0.1) == [Request("a", 0), Request("o", 1)]
    assert s.next_deadline() == 0.6
    s.on_missing("a", 0, None, 0.2)
    s.on_busy("o", 1, [], 0.2)
    # a is receiving piece 0: asked again after the short missing backoff; piece 1 was
    # refused with no hint, so b is probed for it
    assert s.next_requests(0.3) == [Request("a", 0), Request("b", 1)]


def test_a_slots_busy_answer_backs_that_peer_off_for_every_piece() -> None:
    # "h" holds everything. Busy for want of slots: "h" refuses any piece now, so it is not
    # asked for the next piece either until slots_busy_backoff_s passed (a piece-busy answer
    # backs off only that piece: "h" is asked for piece 1 at once).
    for slots, expected in ((False, [Request("h", 1)]), (True, [])):
        s = sched({"h": ROLE_HOLDER}, owner=None, per_peer=1, max_requests=1,
                  slots_busy_backoff_s=0.1, busy_backoff_s=0.5)
        s.on_availability("h", Have(10), 0)
        assert s.next_requests(0) == [Request("h", 0)]
        s.on_busy("h", 0, [], 0, slots=slots)
        assert s.next_requests(0.05) == expected
    assert s.next_deadline() is not None and s.next_deadline() <= 0.1
    assert s.next_requests(0.1) == [Request("h", 1)]
    # off (0): a slots-busy answer is any busy answer
    s = sched({"h": ROLE_HOLDER}, owner=None, per_peer=1, max_requests=1,
              slots_busy_backoff_s=0)
    s.on_availability("h", Have(10), 0)
    s.next_requests(0)
    s.on_busy("h", 0, [], 0, slots=True)
    assert s.next_requests(0) == [Request("h", 1)]


def test_a_piece_refused_without_hints_is_probed_at_a_peer_of_unknown_availability() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER}, per_peer=1,
              max_requests=1, seed=3)
    assert s.next_requests(0) == [Request("o", 0)]
    s.on_busy("o", 0, [], 0)
    probe = s.next_requests(0)
    assert [r.piece for r in probe] == [0] and probe[0].peer in {"a", "b"}
    s.on_missing(probe[0].peer, 0, Have.of(0, [3]), 0.01)
    assert s.next_requests(0.01) == [Request(probe[0].peer, 3)]


def test_hinted_peers_count_as_sources_before_other_pieces_of_capped_peers() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "h": ROLE_HOLDER}, per_peer=1,
              max_requests=1)
    s.on_availability("o", Have(10), 0)
    first = s.next_requests(0)[0]
    assert first.piece == 0 and first.peer in {"o", "h"}
    s.on_busy(first.peer, 0, ["a"], 0)
    assert s.next_requests(0) == [Request("a", 0)]  # not piece 1 of h or the owner


def test_a_missing_answer_teaches_availability_and_backs_off_briefly() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER}, per_peer=1, max_requests=1,
              missing_backoff_s=0.05)
    s.on_busy("o", 0, ["a"], 0)
    s.on_busy("o", 1, [], 0)
    s.on_busy("o", 2, [], 0)
    s.set_peers({"o": ROLE_OWNER, "a": ROLE_FETCHER}, "o")
    s._peers["o"].failed_until = 10  # keep the owner out of this test
    assert s.next_requests(0) == [Request("a", 0)]
    s.on_missing("a", 0, Have.of(0, [4]), 0.01)
    assert s.next_requests(0.01) == [Request("a", 4)]  # learned: a has piece 4
    s.on_piece("a", 4, 0.02)
    # still backed off for piece 0; piece 1 was refused by the owner: a is probed for it
    assert s.next_requests(0.03) == [Request("a", 1)]
    s.on_missing("a", 1, None, 0.03)
    assert s.next_requests(0.07) == [Request("a", 0)]


def test_failure_backs_the_peer_off_entirely() -> None:
    s = sched({"a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=1, max_requests=1,
              failure_backoff_s=5)
    first = s.next_requests(0)[0]
    s.on_failed(first.peer, first.piece, 1)
    other = "b" if first.peer == "a" else "a"
    assert s.next_requests(1) == [Request(other, first.piece)]
    assert s.failures(first.peer) == 1
    assert s.next_deadline() == 4  # the new request stalls at 1 + stall_s, before 6


def test_only_busy_answers_lead_to_a_last_resort_request_after_the_delay() -> None:
    s = sched({"a": ROLE_FETCHER}, owner=None, per_peer=1,
              max_requests=1, busy_backoff_s=10, last_resort_after_s=2)
    s.on_availability("a", Have(10), 0)
    assert s.next_requests(0) == [Request("a", 0)]
    s.on_busy("a", 0, [], 0)
    assert s.next_requests(0) == [Request("a", 1)]
    s.on_busy("a", 1, [], 0)
    assert s.next_requests(1) == [Request("a", 2)]
    s.on_busy("a", 2, [], 1)
    assert s.next_deadline() == 2
    assert s.next_requests(2) == [Request("a", 0, last_resort=True)]


def test_a_stalled_request_is_cancelled_and_counted_as_a_failure() -> None:
    s = sched({"a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=1, max_requests=1, stall_s=3)
    req = s.next_requests(0)[0]
    s.on_progress(req.peer, req.piece, 2)
    assert s.expire(4) == []
    assert s.next_deadline() == 5
    assert s.expire(5) == [req]
    assert s.failures(req.peer) == 1
    assert s.next_requests(5)[0].piece == req.piece


def test_a_long_poll_on_the_owner_waits_longer_than_a_stall() -> None:
    s = sched({"o": ROLE_OWNER}, per_peer=1, stall_s=3, owner_wait_s=10)
    assert s.next_requests(0) == [Request("o", 0)]
    assert s.expire(5) == []
    assert s.expire(10) == [Request("o", 0)]


def test_only_the_owner_is_long_polled_never_a_fetcher_without_availability() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_MEMBER}, per_peer=2)
    assert {r.peer for r in s.next_requests(0)} == {"o"}


def test_a_node_that_is_the_owner_long_polls_nobody_it_only_probes() -> None:
    s = sched({"a": ROLE_FETCHER}, owner="me", per_peer=1)
    assert s.owner is None
    assert s.next_requests(0) == [Request("a", 0)]
    s.on_missing("a", 0, Have(0), 0)
    assert s.next_requests(0) == [Request("a", 1)]


def test_a_peer_that_leaves_loses_its_requests() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER}, per_peer=1, max_requests=2)
    reqs = s.next_requests(0)
    dropped = s.set_peers({"o2": ROLE_OWNER}, "o2")
    assert sorted(dropped, key=lambda r: r.peer) == sorted(reqs, key=lambda r: r.peer)
    assert s.in_flight() == []
    assert s.next_requests(0) == [Request("o2", 0)]


def test_answers_from_a_request_no_longer_in_flight_are_ignored() -> None:
    s = sched({"a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=1, max_requests=1)
    req = s.next_requests(0)[0]
    s.on_busy("zz", req.piece, [], 0)
    assert s.in_flight() == [req]


def test_the_fill_is_done_when_every_piece_arrived_and_contributors_are_known() -> None:
    s = sched({"a": ROLE_HOLDER, "b": ROLE_HOLDER}, per_peer=9, max_requests=10)
    for req in s.next_requests(0):
        s.on_piece(req.peer, req.piece, 1)
    assert s.done and s.prefix == 10
    assert s.contributors() == {"a", "b"}


def test_same_seed_same_choices() -> None:
    def run(seed: int) -> list[Request]:
        s = sched({n: ROLE_HOLDER for n in "abcdef"}, seed=seed, per_peer=1, max_requests=6)
        return s.next_requests(0)
    assert run(7) == run(7)


def test_an_empty_blob_is_done_at_once() -> None:
    s = sched({"a": ROLE_HOLDER}, layout=Layout.for_size(0))
    assert s.done and s.next_requests(0) == []


def test_a_piece_is_probed_at_most_once_per_probe_interval() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER, "c": ROLE_FETCHER},
              per_peer=1, max_requests=1, probe_interval_s=0.25, window_pieces=1)
    assert s.next_requests(0) == [Request("o", 0)]
    s.on_busy("o", 0, [], 0)
    probe = s.next_requests(0)
    assert len(probe) == 1 and probe[0].peer in {"a", "b", "c"}
    s.on_missing(probe[0].peer, 0, Have(0), 0.01)
    assert s.next_requests(0.01) == []  # two more peers unknown, but the interval holds
    assert s.next_deadline() is not None and s.next_deadline() <= 0.25
    again = s.next_requests(0.26)
    assert len(again) == 1 and again[0].peer in {"a", "b", "c"} - {probe[0].peer}


def test_source_states_say_why_a_known_source_is_not_asked() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER, "c": ROLE_FETCHER},
              per_peer=1, max_requests=4)
    for name in ("a", "b", "c"):
        s.on_availability(name, Have.of(0, [1, 2, 3]), 0)
    sent = {r.peer: r.piece for r in s.next_requests(0) if r.peer in "abc"}
    assert set(sent) == {"a", "b", "c"}  # pieces 1-3, one each (per_peer=1)
    s.on_busy("a", sent["a"], (), 0.1)
    s.on_failed("b", sent["b"], 0.1)
    assert s.source_states(sent["a"], 0.2) == {"a": "backoff", "b": "failed", "c": "per_peer"}
    s.on_piece("c", sent["c"], 0.2)
    assert s.source_states(sent["a"], 0.3)["c"] == "usable"
    assert s.source_states(5, 0.3) == {}  # nobody known to have piece 5


def test_with_the_owner_at_per_peer_an_unrefused_piece_waits_for_it_unprobed() -> None:
    peers = {"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER}
    s = sched(peers, per_peer=1, max_requests=4)
    assert s.next_requests(0) == [Request("o", 0)]  # waits for the owner (rule 4)


def test_of_sources_with_as_many_of_our_requests_the_least_loaded_is_asked() -> None:
    for seed in range(8):  # the tie-break is random: the load must decide every time
        s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "b": ROLE_HOLDER, "c": ROLE_HOLDER},
                  seed=seed, max_requests=1)
        s.on_load("a", 5, 0.0)
        s.on_load("b", 1, 0.0)
        s.on_load("c", 3, 0.0)
        assert s.next_requests(0.5) == [Request("b", 0)]


def test_a_load_older_than_load_ttl_is_ignored_and_a_newer_one_replaces_it() -> None:
    def first_peer(loads: list[tuple[str, int, float]], now: float, seed: int) -> str:
        s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "b": ROLE_HOLDER}, seed=seed,
                  max_requests=1, load_ttl_s=1.0)
        for peer, load, at in loads:
            s.on_load(peer, load, at)
        return s.next_requests(now)[0].peer

    # b's high load is stale at t=2: a and b tie again and either may be asked
    assert {first_peer([("b", 9, 0.0)], 2.0, seed) for seed in range(16)} == {"a", "b"}
    # an older report arriving late does not replace a newer one
    assert {first_peer([("a", 0, 0.9), ("b", 9, 1.0), ("b", 0, 0.5)], 1.5, seed)
            for seed in range(16)} == {"a"}


def test_our_own_requests_to_a_source_count_before_its_load() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "b": ROLE_HOLDER}, max_requests=2,
              per_peer=2)
    s.on_load("a", 0, 0.0)
    s.on_load("b", 4, 0.0)
    # the first goes to the idle a, the second to b: a has one of ours in flight already
    assert [r.peer for r in s.next_requests(0.1)] == ["a", "b"]


def test_the_least_loaded_of_the_hinted_peers_is_asked_not_the_newest_hint() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_MEMBER, "c": ROLE_MEMBER},
              max_requests=1)
    s.on_availability("a", Have.of(0, [0]), 0.0)
    assert s.next_requests(0.0) == [Request("a", 0)]
    s.on_load("b", 1, 0.0)
    s.on_load("c", 4, 0.0)
    s.on_busy("a", 0, ["b", "c"], 0.0)  # c is the newest hint, but b runs fewer uploads
    assert s.next_requests(0.0) == [Request("b", 0)]



def test_a_peer_whose_answers_carry_no_load_ranks_after_the_idle_and_before_the_busy() -> None:
    # An older node sends no P2preg-Load: counted as idle it would draw every request; it
    # counts as the mean of the fresh loads the others reported (here 3), however long ago its
    # last answer came (not a stale load, which counts 0).
    for seed in range(8):  # the tie-break is random: the loads must decide every time
        s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "u": ROLE_HOLDER, "b": ROLE_HOLDER},
                  seed=seed, max_requests=3, per_peer=1, load_ttl_s=1.0)
        s.on_load("u", None, 0.0)
        s.on_load("a", 0, 1.5)
        s.on_load("b", 6, 1.5)
        assert [r.peer for r in s.next_requests(2.0)] == ["a", "u", "b"]


def test_a_peer_without_loads_counts_as_the_mean_until_an_answer_carries_one() -> None:
    def first_peer(loads: list[tuple[str, int | None, float]], now: float, seed: int) -> str:
        s = sched({"o": ROLE_OWNER, "a": ROLE_HOLDER, "u": ROLE_HOLDER}, seed=seed,
                  max_requests=1, load_ttl_s=1.0)
        for peer, load, at in loads:
            s.on_load(peer, load, at)
        return s.next_requests(now)[0].peer

    silent: list[tuple[str, int | None, float]] = [("a", 4, 0.0), ("u", None, 0.0)]
    # u counts as a's 4: a tie, either may be asked
    assert {first_peer(silent, 0.5, seed) for seed in range(16)} == {"a", "u"}
    # a's load is stale at t=2 (counts 0) and no fresh load is left to take the mean of: a tie
    assert {first_peer(silent, 2.0, seed) for seed in range(16)} == {"a", "u"}
    # an answer with the header counts again: 9 after a's 4, 1 before it
    assert {first_peer([*silent, ("u", 9, 0.2)], 0.5, seed) for seed in range(16)} == {"a"}
    assert {first_peer([*silent, ("u", 1, 0.2)], 0.5, seed) for seed in range(16)} == {"u"}
    # and one without it marks the peer again
    again = [("a", 4, 0.0), ("u", 1, 0.1), ("u", None, 0.2)]
    assert {first_peer(again, 0.5, seed) for seed in range(16)} == {"a", "u"}


# -- rule 0: parents first (coordinated forwarding) ------------------------------------------


def _joined(peers: dict[str, str], parents: dict[int, str], **kw: int | float) -> Scheduler:
    s = sched(peers, tracker=True, **kw)
    assert s.want_join(0) == {}
    s.set_parents(parents, 0.001)
    return s


def test_with_the_tracker_on_it_joins_first_and_asks_nobody_before_the_answer() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER}, tracker=True, join_wait_s=0.5)
    assert s.want_join(0) == {}
    assert s.want_join(0) is None  # one join at a time
    assert s.next_requests(0.001) == []
    assert s.next_deadline() is not None
    # No answer within join_wait_s: rules 1-6 as without a tracker.
    assert s.next_requests(0.5) == [Request("o", 0), Request("o", 1)]


def test_without_the_tracker_it_never_joins() -> None:
    s = sched({"o": ROLE_OWNER})
    assert s.want_join(0) is None


def test_each_piece_is_asked_of_its_stripes_parent_first_up_to_parent_requests() -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER, "h": ROLE_HOLDER},
                {0: "a", 1: "b"}, parent_requests=2)
    reqs = s.next_requests(0.002)
    # A holder has every piece, yet the parents are asked: even pieces of a, odd of b.
    assert reqs == [Request("a", 0, child=True), Request("b", 1, child=True),
                    Request("a", 2, child=True), Request("b", 3, child=True)]
    assert s.next_requests(0.002) == []  # the stripes' other pieces wait for their parents
    s.on_piece("a", 0, 0.01)
    assert s.next_requests(0.01) == [Request("a", 4, child=True)]


def test_a_parents_404_loses_it_the_piece_falls_back_and_the_loss_is_reported() -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER, "h": ROLE_HOLDER},
                {0: "a", 1: "b"}, parent_requests=1)
    assert s.next_requests(0.002) == [Request("a", 0, child=True), Request("b", 1, child=True)]
    s.on_missing("a", 0, Have(), 0.003)
    assert s.parents == {1: "b"}
    assert s.want_join(0.003) == {0: "a"}
    # Stripe 0 uses rules 1-6 now (the holder has it); stripe 1 still waits for b.
    reqs = s.next_requests(0.003)
    assert reqs and all(not r.child and r.piece % 2 == 0 for r in reqs)
    assert Request("h", 0) in reqs
    for r in reqs:
        s.on_failed(r.peer, r.piece, 0.003)
    # A new parent for stripe 0: its pieces go there again, but not piece 0 (it fell back).
    s.set_parents({0: "b", 1: "b"}, 0.004)
    assert s.next_requests(0.004) == []  # b is at parent_requests (piece 1)
    s.on_piece("b", 1, 0.005)
    assert s.next_requests(0.005) == [Request("b", 2, child=True)]


def test_a_stalled_parent_request_waits_like_a_long_poll_then_loses_the_parent() -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER}, {0: "a"}, stripes=1, parent_requests=1,
                owner_wait_s=10.0, stall_s=3.0)
    assert s.next_requests(0.002) == [Request("a", 0, child=True)]
    assert s.expire(5.0) == []  # a not known to have it: it may wait (a long-poll)
    assert s.expire(10.01) == [Request("a", 0, child=True)]
    assert s.parents == {}
    assert s.want_join(10.01) == {0: "a"}


def test_a_second_request_in_line_at_a_parent_that_has_the_piece_waits_like_a_long_poll(
) -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER}, {0: "a"}, stripes=1, parent_requests=2,
                owner_wait_s=10.0, stall_s=3.0)
    s.on_availability("a", Have.of(4), 0.001)  # the parent holds the pieces
    assert s.next_requests(0.002) == [Request("a", 0, child=True), Request("a", 1, child=True)]
    s.on_progress("a", 0, 0.003)
    # The parent sends one child's answers one at a time: piece 1 has no byte while piece 0
    # flows; that is no stall (``stall_s``), it is in line. The first one held is a stall.
    assert s.expire(5.0) == [Request("a", 0, child=True)]
    assert Request("a", 1, child=True) in s.expire(10.01)


def test_a_moved_place_withdraws_the_requests_still_waiting_at_the_old_parent() -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER, "b": ROLE_FETCHER}, {0: "a"}, stripes=1,
                parent_requests=2)
    assert s.next_requests(0.002) == [Request("a", 0, child=True), Request("a", 1, child=True)]
    s.on_progress("a", 0, 0.003)  # piece 0 is flowing: it stays
    s.set_parents({0: "b"}, 0.05)
    assert s.expire(0.05) == [Request("a", 1, child=True)]
    assert s.next_requests(0.05) == [Request("b", 1, child=True), Request("b", 2, child=True)]
    assert s.parent_losses == 0  # a move is not a loss


def test_it_rejoins_after_rejoin_first_s_doubling_up_to_rejoin_max_s() -> None:
    s = sched({"o": ROLE_OWNER, "a": ROLE_FETCHER}, tracker=True, rejoin_first_s=0.05,
              rejoin_max_s=0.2)
    times = []
    now = 0.0
    assert s.want_join(now) == {}
    while len(times) < 5:
        s.set_parents({0: "a"}, now)
        while True:  # a deadline may be a spurious wake-up (an old timer): not a join
            deadline = s.next_deadline()
            assert deadline is not None
            assert s.want_join(deadline - 1e-6) is None
            now = deadline
            if s.want_join(now) == {}:
                break
        times.append(round(now, 6))
    assert times == [0.05, 0.15, 0.35, 0.55, 0.75]


def test_a_parent_that_leaves_the_peer_set_is_lost() -> None:
    s = _joined({"o": ROLE_OWNER, "a": ROLE_FETCHER}, {0: "a", 1: "o"})
    s.set_peers({"o": ROLE_OWNER}, "o")
    assert s.parents == {1: "o"}
    assert s.want_join(0.01) == {0: "a"}
