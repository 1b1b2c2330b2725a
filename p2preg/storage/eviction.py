"""The cache eviction policy: which cached blobs to delete when the store is over its quota.

Owns: ``EvictionPolicy`` (quota, low-water mark, grace period, mode), ``Candidate`` (one blob as
the policy sees it) and ``EvictionPlan`` (what to delete and why the rest stays). Pure: no I/O, no
clock, no randomness; the caller (``maintenance.py``) reads the store, passes ``now`` and carries
the plan out.

Rules (docs/storage.md, "Eviction and maintenance"):

- Only a mirror evicts. In ``registry`` mode the store is the source of truth for what was pushed:
  nothing is ever deleted for space, only unreferenced blobs by garbage collection.
- Eviction starts when the store is *above* ``max_bytes`` and frees down to the low-water mark
  (``low_water_ratio * max_bytes``), so a store hovering at the quota does not delete on every pass.
  ``max_bytes == 0`` means no quota.
- Candidates are taken in the order given (least recently used first) and skipped when a writer is
  producing the digest (``in_progress``), when it was accessed less than ``min_age_s`` ago (a pull
  in progress keeps its layers), when the caller pinned it, or when it is empty (frees nothing).
- Eviction deletes blob *files* only; links, manifests and tags stay. The mirror treats "row
  present, file missing" as a miss and fetches the blob again.

Must not import anything outside ``p2preg.oci`` (it is pure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

EvictionMode = Literal["registry", "mirror"]

DEFAULT_LOW_WATER_RATIO = 0.9
DEFAULT_MIN_AGE_S = 600.0

# Why a candidate was not evicted (keys of ``EvictionPlan.kept``).
KEPT_IN_PROGRESS = "in_progress"
KEPT_RECENT = "recent"
KEPT_PINNED = "pinned"
KEPT_EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One committed blob as the policy sees it.

    ``last_access`` is wall-clock seconds: the later of its recorded access and its commit time.
    ``in_progress``: a writer is producing this digest right now. ``pinned``: the caller wants it
    kept whatever the quota (e.g. referenced content on a registry, an operator's pin).
    """

    digest: str
    size_bytes: int
    last_access: float
    in_progress: bool = False
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    """The outcome of one ``choose``: blobs to delete in order, and counts of those kept by reason.

    ``short_bytes`` > 0 means the evictable candidates were not enough to free what was asked.
    """

    evict: tuple[Candidate, ...] = ()
    freed_bytes: int = 0
    wanted_bytes: int = 0
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def short_bytes(self) -> int:
        return max(0, self.wanted_bytes - self.freed_bytes)

    @property
    def digests(self) -> tuple[str, ...]:
        return tuple(candidate.digest for candidate in self.evict)


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    """Quota eviction settings; ``choose`` / ``plan`` apply them to a list of candidates."""

    max_bytes: int
    low_water_ratio: float = DEFAULT_LOW_WATER_RATIO
    min_age_s: float = DEFAULT_MIN_AGE_S
    mode: EvictionMode = "mirror"

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 = unlimited), got {self.max_bytes}")
        if not 0.0 < self.low_water_ratio <= 1.0:
            raise ValueError(f"low_water_ratio must be in (0, 1], got {self.low_water_ratio}")
        if self.min_age_s < 0:
            raise ValueError(f"min_age_s must be >= 0, got {self.min_age_s}")
        if self.mode not in ("registry", "mirror"):
            raise ValueError(f"mode must be 'registry' or 'mirror', got {self.mode!r}")

    @property
    def enabled(self) -> bool:
        """True when this policy can ever evict (a mirror with a quota)."""
        return self.mode == "mirror" and self.max_bytes > 0

    @property
    def low_water_bytes(self) -> int:
        """The size eviction frees down to once it has started."""
        return int(self.max_bytes * self.low_water_ratio)

    def over_quota(self, total_bytes: int) -> bool:
        return self.enabled and total_bytes > self.max_bytes

    def bytes_to_free(self, total_bytes: int) -> int:
        """How much to free for a store of ``total_bytes``: 0 unless it is above the quota."""
        if not self.over_quota(total_bytes):
            return 0
        return total_bytes - self.low_water_bytes

    def choose(
        self, candidates: Iterable[Candidate], wanted_bytes: int, now: float
    ) -> EvictionPlan:
        """Pick candidates, in the order given, until ``wanted_bytes`` are freed.

        Use this to continue an eviction over several batches of candidates; ``plan`` starts one.
        """
        if not self.enabled or wanted_bytes <= 0:
            return EvictionPlan(wanted_bytes=max(0, wanted_bytes) if self.enabled else 0)
        recent_after = now - self.min_age_s
        evict: list[Candidate] = []
        kept: dict[str, int] = {}
        freed = 0
        seen: set[str] = set()
        for candidate in candidates:
            if freed >= wanted_bytes:
                break
            if candidate.digest in seen:
                continue
            seen.add(candidate.digest)
            reason = self._keep_reason(candidate, recent_after)
            if reason is not None:
                kept[reason] = kept.get(reason, 0) + 1
                continue
            evict.append(candidate)
            freed += candidate.size_bytes
        return EvictionPlan(tuple(evict), freed, wanted_bytes, kept)

    def plan(self, total_bytes: int, candidates: Iterable[Candidate], now: float) -> EvictionPlan:
        """``choose`` what to delete from a store of ``total_bytes`` (nothing when within quota)."""
        return self.choose(candidates, self.bytes_to_free(total_bytes), now)

    def keep_reason(self, candidate: Candidate, now: float) -> str | None:
        """Why ``candidate`` must stay at ``now`` (a ``KEPT_*`` value), or None when it may go.

        Ignores the quota: this is the per-blob check, repeated just before each delete.
        """
        return self._keep_reason(candidate, now - self.min_age_s)

    @staticmethod
    def _keep_reason(candidate: Candidate, recent_after: float) -> str | None:
        if candidate.in_progress:
            return KEPT_IN_PROGRESS
        if candidate.pinned:
            return KEPT_PINNED
        if candidate.last_access > recent_after:
            return KEPT_RECENT
        if candidate.size_bytes <= 0:
            return KEPT_EMPTY
        return None
