"""Routing: which peers a node asks for a digest, in which order, and who owns the digest."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2preg.p2p.routing import (
    ROLE_FETCHER,
    ROLE_HOLDER,
    ROLE_OWNER,
    Peer,
    hrw_order,
    owner_of,
    plan_route,
)

DIGEST = "sha256:" + "ab" * 32
NAMES = ["n0", "n1", "n2", "n3", "n4", "n5"]
PEERS = {n: Peer(n, f"10.0.0.{i}:5000") for i, n in enumerate(NAMES)}
ORDER = hrw_order(DIGEST, NAMES)  # the digest's HRW order: ORDER[0] owns it


def peers(*names: str) -> list[Peer]:
    return [PEERS[n] for n in names]


def route(me: str, holders: tuple[str, ...] = (), fetchers: tuple[str, ...] = (),
          **kwargs: object) -> list[tuple[str, str]]:
    plan = plan_route(DIGEST, self_name=me, live=peers(*NAMES), holders=peers(*holders),
                      fetchers=peers(*fetchers), **kwargs)  # type: ignore[arg-type]
    return [(c.peer.name, c.role) for c in plan.candidates]


def test_the_owner_is_the_same_whatever_the_order_of_members() -> None:
    shuffled = NAMES[:]
    random.Random(3).shuffle(shuffled)
    assert owner_of(DIGEST, shuffled) == owner_of(DIGEST, NAMES) == ORDER[0]


def test_removing_a_member_only_moves_the_digests_it_owned() -> None:
    digests = [f"sha256:{i:064x}" for i in range(400)]
    before = {d: owner_of(d, NAMES) for d in digests}
    gone = "n3"
    after = {d: owner_of(d, [n for n in NAMES if n != gone]) for d in digests}
    moved = {d for d in digests if before[d] != after[d]}
    assert moved == {d for d in digests if before[d] == gone}


def test_owners_are_spread_evenly() -> None:
    counts = Counter(owner_of(f"sha256:{i:064x}", NAMES) for i in range(3000))
    assert set(counts) == set(NAMES)
    assert max(counts.values()) < 1.3 * 3000 / len(NAMES)


def test_no_owner_without_members() -> None:
    assert owner_of(DIGEST, []) is None


@pytest.mark.parametrize(
    ("case", "me", "holders", "fetchers", "expected"),
    [
        ("nobody has it: ask only the owner", ORDER[3], (), (), [(ORDER[0], ROLE_OWNER)]),
        ("the owner itself asks no peer", ORDER[0], (), (), []),
        ("holders first, nearest first, then the owner", ORDER[3], (ORDER[5], ORDER[4]), (),
         [(ORDER[5], ROLE_HOLDER), (ORDER[4], ROLE_HOLDER), (ORDER[0], ROLE_OWNER)]),
        ("the owner as a holder keeps its place but is asked as owner", ORDER[3],
         (ORDER[5], ORDER[0]), (), [(ORDER[5], ROLE_HOLDER), (ORDER[0], ROLE_OWNER)]),
        ("only fetchers ranked above me are followed", ORDER[2], (), (ORDER[4], ORDER[1]),
         [(ORDER[1], ROLE_FETCHER), (ORDER[0], ROLE_OWNER)]),
        ("the owner asks holders but follows no fetcher", ORDER[0], (ORDER[4],), (ORDER[1],),
         [(ORDER[4], ROLE_HOLDER)]),
        ("a node never asks itself", ORDER[4], (ORDER[4], ORDER[5]), (),
         [(ORDER[5], ROLE_HOLDER), (ORDER[0], ROLE_OWNER)]),
    ],
)
def test_route_table(case: str, me: str, holders: tuple[str, ...], fetchers: tuple[str, ...],
                     expected: list[tuple[str, str]]) -> None:
    assert route(me, holders, fetchers) == expected, case


def test_two_fetchers_never_follow_each_other() -> None:
    for a in NAMES:
        for b in NAMES:
            if a == b:
                continue
            a_follows_b = (b, ROLE_FETCHER) in route(a, fetchers=(b,))
            b_follows_a = (a, ROLE_FETCHER) in route(b, fetchers=(a,))
            assert not (a_follows_b and b_follows_a)


def test_a_node_acting_for_a_peer_asks_holders_only() -> None:
    assert route(ORDER[3], (ORDER[5],), (ORDER[1],), acting_for_peer=True) == [
        (ORDER[5], ROLE_HOLDER)]


def test_skipped_peers_are_left_out_and_demoted_ones_go_last() -> None:
    got = route(ORDER[3], (ORDER[5], ORDER[4], ORDER[2]), (), skipped={ORDER[4]},
                demoted={ORDER[5]})
    assert got == [(ORDER[2], ROLE_HOLDER), (ORDER[0], ROLE_OWNER), (ORDER[5], ROLE_HOLDER)]


def test_a_skipped_owner_is_not_asked() -> None:
    assert route(ORDER[3], skipped={ORDER[0]}) == []


def test_dead_members_are_not_asked_and_the_next_member_owns() -> None:
    live = [PEERS[n] for n in NAMES if n != ORDER[0]]
    plan = plan_route(DIGEST, self_name=ORDER[3], live=live, holders=peers(ORDER[0]),
                      fetchers=[])
    assert plan.owner == ORDER[1]
    assert [(c.peer.name, c.role) for c in plan.candidates] == [(ORDER[1], ROLE_OWNER)]


def test_a_lonely_node_owns_everything() -> None:
    plan = plan_route(DIGEST, self_name="solo", live=[], holders=[], fetchers=[])
    assert plan.self_is_owner and plan.candidates == ()


def test_at_most_max_peers_are_returned() -> None:
    got = route(ORDER[0], tuple(ORDER[1:]), (), max_peers=2)
    assert got == [(ORDER[1], ROLE_HOLDER), (ORDER[2], ROLE_HOLDER)]
