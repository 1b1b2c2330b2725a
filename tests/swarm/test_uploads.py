"""The upload policy: per-piece cap with hints, global slots, last resort."""

from __future__ import annotations

import random

from p2preg.swarm.pieces import BUSY_PIECE, BUSY_SLOTS
from p2preg.swarm.uploads import UploadConfig, UploadPolicy

D = "sha256:" + "ab" * 32


def policy(**kw: int | float) -> UploadPolicy:
    return UploadPolicy(UploadConfig(**kw), random.Random(1))  # type: ignore[arg-type]


def test_a_piece_goes_to_at_most_piece_cap_peers_and_the_next_is_hinted_to_them() -> None:
    up = policy(piece_cap=2)
    assert up.admit(D, 0, "a", now=0).granted
    assert up.admit(D, 0, "b", now=0).granted
    third = up.admit(D, 0, "c", now=0)
    assert not third.granted and third.busy == BUSY_PIECE
    assert sorted(third.hints) == ["a", "b"]
    assert up.refused_piece == 1


def test_the_cap_is_per_piece() -> None:
    up = policy(piece_cap=1)
    assert up.admit(D, 0, "a", now=0).granted
    assert up.admit(D, 1, "b", now=0).granted
    assert up.admit("sha256:" + "cd" * 32, 0, "b", now=0).granted


def test_a_completed_upload_keeps_its_place() -> None:
    up = policy(piece_cap=1)
    t = up.admit(D, 0, "a", now=0).ticket
    assert t is not None
    up.release(t, completed=True, now=1)
    refused = up.admit(D, 0, "b", now=2)
    assert not refused.granted and refused.hints == ("a",)


def test_a_failed_upload_frees_its_place() -> None:
    up = policy(piece_cap=1)
    t = up.admit(D, 0, "a", now=0).ticket
    assert t is not None
    up.release(t, completed=False, now=1)
    assert up.admit(D, 0, "b", now=2).granted
    assert up.served_to(D, 0) == ("b",)


def test_the_same_peer_may_resume_a_piece_it_holds_a_place_for() -> None:
    up = policy(piece_cap=1)
    assert up.admit(D, 0, "a", now=0).granted
    assert up.admit(D, 0, "a", now=1).granted


def test_a_place_expires_after_the_ttl_and_when_the_peer_leaves() -> None:
    up = policy(piece_cap=1, served_ttl_s=10)
    t = up.admit(D, 0, "a", now=0).ticket
    assert t is not None
    up.release(t, completed=True, now=0)
    assert not up.admit(D, 0, "b", now=5).granted
    assert up.admit(D, 0, "b", now=11).granted
    up.forget_peer("b")
    assert up.admit(D, 0, "c", now=12).granted


def test_global_slots_refuse_with_the_pieces_holders_as_hints() -> None:
    # "a" completed piece 0 and "e" receives it; "b" and "c" completed pieces 1 and 2; "e"
    # and "f" hold the slots. The next asker for piece 0 is hinted "a" and "e" (they have or
    # pass on that piece), never "b" or "c" (recent uploaders of other pieces: in the
    # simulation a hint to them mostly ends in 404).
    up = policy(piece_cap=9, upload_slots=2)
    t1 = up.admit(D, 0, "a", now=0).ticket
    assert t1 is not None
    up.release(t1, completed=True, now=0)
    for peer, piece in (("b", 1), ("c", 2)):
        t = up.admit(D, piece, peer, now=0).ticket
        assert t is not None
        up.release(t, completed=True, now=0)
    assert up.admit(D, 0, "e", now=0).granted
    assert up.admit(D, 1, "f", now=0).granted
    busy = up.admit(D, 0, "d", now=0)
    assert busy.busy == BUSY_SLOTS and sorted(busy.hints) == ["a", "e"]
    assert up.active == 2 and up.refused_slots == 1
    # A piece nobody got from this node: no hint (not a guess that costs a 404).
    assert up.admit(D, 3, "d", now=0).hints == ()


def test_last_resort_ignores_the_piece_cap_but_not_the_slots() -> None:
    up = policy(piece_cap=1, upload_slots=1, last_resort_slots=1)
    assert up.admit(D, 0, "a", now=0).granted
    assert not up.admit(D, 0, "b", now=0).granted
    assert up.admit(D, 0, "b", now=0, last_resort=True).granted
    assert up.admit(D, 0, "c", now=0, last_resort=True).busy == BUSY_SLOTS
    assert up.served_to(D, 0) == ("a",)  # a last-resort asker takes no place


def test_release_frees_a_slot_and_is_idempotent() -> None:
    up = policy(upload_slots=1)
    t = up.admit(D, 0, "a", now=0).ticket
    assert t is not None
    up.release(t, completed=True, now=0)
    up.release(t, completed=True, now=0)
    assert up.active == 0
    assert up.admit(D, 1, "b", now=0).granted


def test_memory_is_bounded_by_max_digests() -> None:
    up = policy(piece_cap=1, max_digests=2)
    for i in range(3):
        assert up.admit(f"sha256:{i:064x}", 0, "a", now=0).granted
    # the oldest digest was forgotten: its piece has a free place again
    assert up.admit(f"sha256:{0:064x}", 0, "b", now=0).granted
    assert not up.admit(f"sha256:{2:064x}", 0, "b", now=0).granted


def test_a_seed_gives_each_piece_seed_piece_cap_places() -> None:
    up = policy(piece_cap=2, seed_piece_cap=1, seed_idle_below=0)
    assert up.admit(D, 0, "a", now=0, seed=True).granted
    refused = up.admit(D, 0, "b", now=0, seed=True)
    assert refused.busy == BUSY_PIECE and refused.hints == ("a",)
    assert up.admit(D, 1, "b", now=0).granted  # a fill in progress: piece_cap
    assert up.admit(D, 1, "c", now=0).granted


def test_a_seed_frees_a_completed_place_soon_but_keeps_a_running_one() -> None:
    up = policy(piece_cap=2, seed_piece_cap=1, seed_served_ttl_s=2, seed_idle_below=0)
    t = up.admit(D, 0, "a", now=0, seed=True).ticket
    assert t is not None
    assert not up.admit(D, 0, "b", now=5, seed=True).granted  # a's upload still runs
    up.release(t, completed=True, now=6)
    assert not up.admit(D, 0, "b", now=7, seed=True).granted  # completed 1 s ago
    assert up.admit(D, 0, "b", now=8.5, seed=True).granted  # 2.5 s ago: the place is free
    # a node still filling keeps completed places for served_ttl_s
    t2 = up.admit(D, 1, "a", now=0).ticket
    assert t2 is not None and up.admit(D, 1, "b", now=0).granted
    up.release(t2, completed=True, now=1)
    assert not up.admit(D, 1, "c", now=50).granted


def test_an_idle_seed_ignores_its_piece_cap_a_busy_one_does_not() -> None:
    up = policy(seed_piece_cap=1, seed_idle_below=2)
    assert up.admit(D, 0, "a", now=0, seed=True).granted  # 0 running
    assert up.admit(D, 0, "b", now=0, seed=True).granted  # 1 running: below 2, idle
    busy = up.admit(D, 0, "c", now=0, seed=True)  # 2 running: the cap holds
    assert not busy.granted and set(busy.hints) == {"a", "b"}
    # not a seed: the per-piece cap holds however idle the node is
    fresh = policy(piece_cap=1, seed_idle_below=2)
    assert fresh.admit(D, 0, "a", now=0).granted
    assert not fresh.admit(D, 0, "b", now=0).granted
