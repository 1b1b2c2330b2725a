"""The eviction policy as a table: what goes, what stays and why, for a given store and quota."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from p2preg.storage.eviction import (
    KEPT_EMPTY,
    KEPT_IN_PROGRESS,
    KEPT_PINNED,
    KEPT_RECENT,
    Candidate,
    EvictionMode,
    EvictionPolicy,
)

NOW = 2_000_000_000.0
MIN_AGE_S = 600.0
OLD = NOW - 10 * MIN_AGE_S
QUOTA = 1000  # low water at 90%: 900


def old(name: str, size: int = 100, *, at: float = OLD, **flags: bool) -> Candidate:
    return Candidate(digest=name, size_bytes=size, last_access=at, **flags)


@dataclass(frozen=True)
class Case:
    id: str
    total_bytes: int
    candidates: tuple[Candidate, ...]
    evicted: tuple[str, ...]
    kept: dict[str, int]
    max_bytes: int = QUOTA
    mode: EvictionMode = "mirror"


CASES = [
    Case("at the quota exactly: nothing", 1000, (old("a"), old("b")), (), {}),
    Case("no quota (0): nothing however big", 10**12, (old("a"),), (), {}, max_bytes=0),
    Case("registry mode never evicts", 5000, (old("a"), old("b")), (), {}, mode="registry"),
    Case(
        "over the quota: least recently used first, down to the low-water mark",
        1150, (old("a"), old("b"), old("c"), old("d")), ("a", "b", "c"), {},
    ),
    Case(
        "the order given is the LRU order (the policy does not re-sort)",
        1050, (old("newer", at=OLD + 5), old("older", at=OLD)), ("newer", "older"), {},
    ),
    Case(
        "a big blob may overshoot the low-water mark",
        1001, (old("big", 700), old("small")), ("big",), {},
    ),
    Case(
        "a blob being written is never evicted",
        1100, (old("busy", in_progress=True), old("a"), old("b")), ("a", "b"),
        {KEPT_IN_PROGRESS: 1},
    ),
    Case(
        "a blob accessed within the grace period stays (a pull in progress keeps its layers)",
        1100, (old("pulling", at=NOW - MIN_AGE_S + 1), old("a"), old("b")), ("a", "b"),
        {KEPT_RECENT: 1},
    ),
    Case(
        "accessed exactly min_age_s ago is old enough",
        1100, (old("edge", at=NOW - MIN_AGE_S), old("a")), ("edge", "a"), {},
    ),
    Case(
        "pinned content stays",
        1100, (old("pinned", pinned=True), old("a"), old("b")), ("a", "b"), {KEPT_PINNED: 1},
    ),
    Case(
        "an empty blob frees nothing and is left alone",
        1100, (old("empty", 0), old("a"), old("b")), ("a", "b"), {KEPT_EMPTY: 1},
    ),
    Case(
        "a digest listed twice is considered once",
        1100, (old("a"), old("a"), old("b")), ("a", "b"), {},
    ),
    Case(
        "everything protected: nothing evicted, the shortfall is reported",
        1100, (old("x", in_progress=True), old("y", at=NOW)), (), {KEPT_IN_PROGRESS: 1,
                                                                    KEPT_RECENT: 1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_policy_table(case: Case) -> None:
    policy = EvictionPolicy(max_bytes=case.max_bytes, min_age_s=MIN_AGE_S, mode=case.mode)

    plan = policy.plan(case.total_bytes, case.candidates, NOW)

    assert plan.digests == case.evicted
    assert plan.kept == case.kept
    assert plan.freed_bytes == sum(c.size_bytes for c in plan.evict)


def test_eviction_frees_down_to_the_low_water_mark_not_just_under_the_quota() -> None:
    policy = EvictionPolicy(max_bytes=1000, low_water_ratio=0.5, min_age_s=MIN_AGE_S)
    candidates = [old(str(i)) for i in range(10)]

    plan = policy.plan(1100, candidates, NOW)

    assert plan.wanted_bytes == 600  # 1100 - 500
    assert plan.digests == ("0", "1", "2", "3", "4", "5")
    assert plan.short_bytes == 0


def test_shortfall_is_what_could_not_be_freed() -> None:
    policy = EvictionPolicy(max_bytes=1000, min_age_s=MIN_AGE_S)

    plan = policy.plan(1300, [old("a"), old("b", at=NOW)], NOW)

    assert plan.wanted_bytes == 400 and plan.freed_bytes == 100 and plan.short_bytes == 300


def test_choose_continues_an_eviction_below_the_quota_until_the_bytes_asked_for() -> None:
    policy = EvictionPolicy(max_bytes=1000, min_age_s=MIN_AGE_S)
    # A second batch of candidates: the store is already under the quota, 150 bytes still wanted.
    plan = policy.choose([old("c"), old("d"), old("e")], 150, NOW)
    assert plan.digests == ("c", "d")


def test_nothing_is_wanted_within_the_quota_or_without_one() -> None:
    assert EvictionPolicy(max_bytes=1000).bytes_to_free(1000) == 0
    assert EvictionPolicy(max_bytes=1000).bytes_to_free(1001) == 101
    assert EvictionPolicy(max_bytes=0).bytes_to_free(10**15) == 0
    assert EvictionPolicy(max_bytes=1000, mode="registry").bytes_to_free(10**6) == 0
    assert not EvictionPolicy(max_bytes=1000, mode="registry").choose([old("a")], 100, NOW).evict


def test_keep_reason_is_the_per_blob_check_repeated_before_a_delete() -> None:
    policy = EvictionPolicy(max_bytes=1000, min_age_s=MIN_AGE_S)
    assert policy.keep_reason(old("a"), NOW) is None
    assert policy.keep_reason(old("a", at=NOW - 1), NOW) == KEPT_RECENT
    assert policy.keep_reason(old("a", in_progress=True), NOW) == KEPT_IN_PROGRESS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": -1},
        {"max_bytes": 1000, "low_water_ratio": 0.0},
        {"max_bytes": 1000, "low_water_ratio": 1.5},
        {"max_bytes": 1000, "min_age_s": -1.0},
        {"max_bytes": 1000, "mode": "proxy"},
    ],
    ids=["negative quota", "zero low water", "low water above quota", "negative grace", "mode"],
)
def test_bad_settings_are_refused_with_a_clear_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EvictionPolicy(**kwargs)  # type: ignore[arg-type]
