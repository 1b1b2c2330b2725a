"""Background storage upkeep: batched access times, upload expiry, quota eviction and GC.

Owns: ``AccessRecorder`` (collects ``touch(digest)`` from the hot read path in memory and writes
them with one ``MetadataStore.touch_many`` per flush, never one SQLite write per request) and
``Maintenance`` (one asyncio task that flushes the recorder every ``flush_interval_s`` and every
``interval_s`` runs a pass: flush, expire idle upload sessions, evict least-recently-used blobs
when the store is over its quota, calling ``on_evict(digest)`` for each blob it deleted so the
gossip layer can advertise a ``drop``), and in registry mode, every ``gc_interval_s``, garbage
collection (``gc.collect_garbage``: each blob it deletes goes to ``on_evict`` as well). It also
runs a pass early when a flush tick sees the store over quota. ``make_room(bytes)`` evicts on
demand, whatever the quota, for a mirror fill that would not fit on the disk (``room.py``).

Garbage collection runs in registry mode only. A mirror never deletes a manifest, tag or link
(everything it caches stays referenced), so GC would find nothing but blobs the mirror keeps for
its peers; the mirror's disk is bounded by eviction instead. GC gets the recorder's pending access
times, so a blob a client read a moment ago (before the flush) is not collected.

Time: ``clock.now()`` must be *wall-clock* seconds (``WallClock`` in a node, ``FakeClock`` in
tests): access times are stored on disk and compared with file mtimes. Sleeping goes through the
same clock, so tests drive the loop with ``FakeClock.advance``.

How an eviction pass carries out ``eviction.EvictionPolicy`` safely:

- a blob's effective last access is the latest of its ``blob_access`` row, its file's mtime (its
  commit: a blob a fill just wrote is not evicted before anyone read it) and any touch still
  pending in the recorder; blobs without a row are given one (their mtime) on the first
  over-quota pass of the process and, at most once per ``interval_s``, when the rows run out
  before the quota is met;
- just before each delete the candidate is checked again (writer in progress, fresh touch) with
  no ``await`` between the check and the delete, so a request on the same loop cannot slip in;
- the delete removes the file and its ``blob_access`` row only. Links, manifests and tags stay:
  the mirror treats a missing file as a miss and fetches again (docs/storage.md). A reader that
  already opened the file (sendfile in progress) keeps reading it: unlink does not cut it off.

Must not import aiohttp or the registry, upstream, gossip or fetch packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from p2preg.clock import Clock
from p2preg.logs import event
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.eviction import (
    DEFAULT_LOW_WATER_RATIO,
    Candidate,
    EvictionMode,
    EvictionPolicy,
)
from p2preg.storage.gc import GcReport, collect_garbage
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 5.0
LRU_BATCH = 256  # access rows read per round of an eviction pass (grows x4 per round)
YIELD_EVERY = 8  # deletes (each fsyncs a directory) between two yields to the event loop

EvictCallback = Callable[[str], object]


class AccessRecorder:
    """Last-access times gathered in memory and written to SQLite in batches.

    ``touch`` is O(1) and does no I/O: call it for every blob (and manifest) served or stored.
    ``flush`` writes everything pending in one transaction in a worker thread; when that fails the
    batch is kept for the next flush. Times only move forward (``touch_many`` keeps the max).
    """

    def __init__(self, meta: MetadataStore, clock: Clock) -> None:
        self._meta = meta
        self._clock = clock
        self._pending: dict[str, float] = {}
        self._flushing: dict[str, float] = {}
        self._flush_lock = asyncio.Lock()
        self.flushed_total = 0
        self.flush_failures_total = 0

    def touch(self, digest: str | Digest) -> None:
        """Record an access to ``digest`` now (in memory until the next flush)."""
        key = str(digest)
        now = self._clock.now()
        if self._pending.get(key, -math.inf) < now:
            self._pending[key] = now

    def touch_all(self, digests: Iterable[str | Digest]) -> None:
        """``touch`` several digests (e.g. the layers of a manifest just served)."""
        for digest in digests:
            self.touch(digest)

    def last_access(self, digest: str | Digest) -> float | None:
        """The newest access to ``digest`` not yet in the database (pending or being flushed)."""
        key = str(digest)
        pending = self._pending.get(key)
        flushing = self._flushing.get(key)
        if pending is None:
            return flushing
        return pending if flushing is None else max(pending, flushing)

    @property
    def pending(self) -> int:
        """How many digests wait for the next flush."""
        return len(self._pending)

    async def flush(self) -> int:
        """Write the pending accesses with one ``touch_many``; return how many digests."""
        async with self._flush_lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            self._flushing = batch
            try:
                await asyncio.to_thread(self._meta.touch_many, list(batch.items()))
            except BaseException as exc:
                for key, when in batch.items():  # keep them for the next flush
                    if self._pending.get(key, -math.inf) < when:
                        self._pending[key] = when
                if isinstance(exc, Exception):
                    self.flush_failures_total += 1
                raise
            finally:
                self._flushing = {}
            self.flushed_total += len(batch)
            return len(batch)


@dataclass(frozen=True, slots=True)
class EvictionReport:
    """What one eviction did. ``short_bytes`` > 0: not enough could be evicted (all recent/busy)."""

    store_bytes_before: int
    store_bytes_after: int
    wanted_bytes: int = 0
    evicted: tuple[str, ...] = ()
    freed_bytes: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    stale_rows: int = 0  # access rows whose blob was already gone (forgotten)
    seeded: int = 0  # blobs that had no access row and got one (their mtime)
    failed: int = 0  # deletes that raised an OS error

    @property
    def short_bytes(self) -> int:
        return max(0, self.wanted_bytes - self.freed_bytes)


@dataclass(frozen=True, slots=True)
class PassReport:
    """What one maintenance pass did, at wall-clock time ``at``."""

    at: float
    accesses_flushed: int
    uploads_expired: int
    eviction: EvictionReport
    gc: GcReport | None = None  # None: no garbage collection was due in this pass


@dataclass
class _Eviction:
    """Mutable tally of one eviction in progress."""

    wanted: int
    freed: int = 0
    evicted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    seeded: int = 0
    failed: int = 0

    def keep(self, reason: str, count: int = 1) -> None:
        self.kept[reason] = self.kept.get(reason, 0) + count


class Maintenance:
    """Periodic upkeep of one store (see the module docstring). ``start``/``stop`` or ``run``.

    ``max_bytes``: quota on committed blob bytes (0 = unlimited); eviction frees down to
    ``low_water_ratio * max_bytes``. ``min_age_s``: blobs accessed more recently are never
    evicted. ``upload_max_age_s``: idle upload sessions older than this are dropped (0 = never).
    ``mode``: only ``mirror`` evicts, only ``registry`` collects garbage: every
    ``gc_interval_s`` (0 = never; the first pass collects too), blobs unreferenced for
    ``gc_grace_s``. ``timer`` measures how long a collection took (seconds, any origin).
    Stop it before closing the metadata store.
    """

    def __init__(
        self,
        blobs: BlobStore,
        meta: MetadataStore,
        uploads: UploadManager | None,
        clock: Clock,
        *,
        max_bytes: int,
        min_age_s: float,
        upload_max_age_s: float,
        interval_s: float,
        mode: EvictionMode = "mirror",
        low_water_ratio: float = DEFAULT_LOW_WATER_RATIO,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        recorder: AccessRecorder | None = None,
        on_evict: EvictCallback | None = None,
        gc_interval_s: float = 0.0,
        gc_grace_s: float = 3600.0,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval_s <= 0 or flush_interval_s <= 0:
            raise ValueError("interval_s and flush_interval_s must be positive")
        if upload_max_age_s < 0:
            raise ValueError("upload_max_age_s must be >= 0 (0 = never expire)")
        if gc_interval_s < 0 or gc_grace_s <= 0:
            raise ValueError("gc_interval_s must be >= 0 (0 = never) and gc_grace_s positive")
        self.policy = EvictionPolicy(
            max_bytes=max_bytes, low_water_ratio=low_water_ratio, min_age_s=min_age_s, mode=mode
        )
        self.blobs = blobs
        self.meta = meta
        self.uploads = uploads
        self.recorder = recorder if recorder is not None else AccessRecorder(meta, clock)
        self.interval_s = interval_s
        self.flush_interval_s = flush_interval_s
        self.upload_max_age_s = upload_max_age_s
        self._clock = clock
        self._on_evict = on_evict
        self.gc_interval_s = gc_interval_s if mode == "registry" else 0.0
        self.gc_grace_s = gc_grace_s
        self._timer = timer
        self._next_gc_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._seeded_at = -math.inf
        self._last_eviction_total: int | None = None
        self._changed = asyncio.Event()
        self.last_report: PassReport | None = None
        self.ticks = 0  # loop iterations (a flush or a pass each)
        self.passes = 0
        self.failed_passes = 0
        self.evicted_blobs_total = 0
        self.room_evictions_total = 0  # make_room calls (a fill that needed room on the disk)
        self._room_lock = asyncio.Lock()
        self.evicted_bytes_total = 0
        self.uploads_expired_total = 0
        self.last_gc: GcReport | None = None
        self.gc_runs_total = 0
        self.gc_failed_runs_total = 0
        self.gc_deleted_blobs_total = 0
        self.gc_freed_bytes_total = 0
        self.gc_links_removed_total = 0
        self.gc_last_duration_s: float | None = None  # None until a collection ran
        self.gc_last_run_at: float | None = None  # wall-clock start of the last collection

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``run()`` as a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="p2preg-storage-maintenance")

    async def stop(self) -> None:
        """Stop the task, then write the accesses still pending (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.recorder.flush()
        except Exception:
            log.exception("final access-time flush failed")

    async def run(self) -> None:
        """Loop until cancelled: a pass now and every ``interval_s``, a flush every tick between.

        A tick that finds the store over its quota (and grown since the last eviction) runs a pass
        at once. A failing pass or flush is logged and retried on the next tick; it never ends
        the loop.
        """
        next_pass = self._clock.now()
        while True:
            now = self._clock.now()
            total = self.blobs.total_bytes()
            early = self.policy.over_quota(total) and total != self._last_eviction_total
            if now >= next_pass or early:
                if now >= next_pass:
                    next_pass = now + self.interval_s
                await self._guarded(self.run_once())
            else:
                await self._guarded(self.recorder.flush())
            self.ticks += 1
            self._notify()
            delay = min(self.flush_interval_s, next_pass - self._clock.now())
            await self._clock.sleep(max(0.0, delay))  # no await between the notify and here

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checked after every tick and pass (no polling).

        When the loop runs on a ``FakeClock``, it is parked in ``sleep`` by the time this returns.
        """
        while not condition():
            await self._changed.wait()

    async def wait_for_passes(self, count: int) -> None:
        """Wait until ``passes + failed_passes`` reaches ``count``."""
        await self.wait_until(lambda: self.passes + self.failed_passes >= count)

    # -- one pass --------------------------------------------------------------------------------

    async def run_once(self) -> PassReport:
        """Flush access times, expire idle uploads, evict if over quota, collect garbage when
        due (registry mode); return what happened."""
        ok = False
        try:
            report = await self._pass()
            ok = True
            return report
        finally:
            if ok:
                self.passes += 1
            else:
                self.failed_passes += 1
            self._notify()

    async def _pass(self) -> PassReport:
        # A failed flush or expiry does not hold eviction back: touches that could not be written
        # are still pending in the recorder, and eviction consults it.
        now = self._clock.now()
        flushed = expired = 0
        try:
            flushed = await self.recorder.flush()
        except Exception:
            log.exception("access-time flush failed; the touches are kept for the next one")
        if self.uploads is not None and self.upload_max_age_s > 0:
            try:
                expired = self.uploads.expire(self.upload_max_age_s)
            except Exception:
                log.exception("expiring upload sessions failed")
            self.uploads_expired_total += expired
        eviction = await self.evict(now)
        gc: GcReport | None = None
        if self.gc_interval_s > 0 and now >= self._next_gc_at:
            self._next_gc_at = now + self.gc_interval_s
            try:
                gc = await self.collect(now)
            except Exception:
                log.exception("garbage collection failed; next try in %.0f s", self.gc_interval_s)
        report = PassReport(now, flushed, expired, eviction, gc)
        self.last_report = report
        if expired:
            event(log, "uploads_expired", count=expired, max_age_s=self.upload_max_age_s)
        return report

    async def evict(self, now: float) -> EvictionReport:
        """Evict least-recently-used blobs until the store is at the low-water mark (if over)."""
        before = self.blobs.total_bytes()
        tally = _Eviction(self.policy.bytes_to_free(before))
        if tally.wanted > 0:
            if self._seeded_at == -math.inf:  # first eviction of this process
                tally.seeded += await self._seed_access_rows(now)
            await self._evict_lru(tally, now)
        after = self.blobs.total_bytes()
        self._last_eviction_total = after
        report = EvictionReport(
            before, after, tally.wanted, tuple(tally.evicted), tally.freed, dict(tally.kept),
            tally.stale, tally.seeded, tally.failed,
        )
        if tally.wanted > 0:
            self._log_eviction(report)
        return report

    async def make_room(self, wanted_bytes: int) -> int:
        """Evict least-recently-used blobs to free ``wanted_bytes`` now, quota or not (a mirror
        fill that would not fit on the disk; ``storage/room.py``). The keep rules hold: nothing
        accessed within ``min_age_s``, nothing being written. Registry mode frees nothing.
        Returns the bytes freed."""
        if self.policy.mode != "mirror" or wanted_bytes <= 0:
            return 0
        async with self._room_lock:
            now = self._clock.now()
            # Any quota above the store's size enables the policy; ``wanted`` is what counts.
            policy = replace(self.policy, max_bytes=max(1, self.blobs.total_bytes()))
            tally = _Eviction(wanted_bytes)
            if self._seeded_at == -math.inf:
                tally.seeded += await self._seed_access_rows(now)
            await self._evict_lru(tally, now, policy)
            self.room_evictions_total += 1
            event(log, "room_made", wanted_bytes=wanted_bytes, freed_bytes=tally.freed,
                  evicted=len(tally.evicted), kept=dict(tally.kept))
            return tally.freed

    async def collect(self, now: float) -> GcReport:
        """Collect garbage now (whatever the mode and interval): delete blobs unreferenced for
        ``gc_grace_s`` and the dead links (``gc.collect_garbage``); every deleted blob goes to
        ``on_evict``. Counted in the ``gc_*`` counters and logged as one ``gc_collected`` event.
        """
        started = self._timer()
        self.gc_last_run_at = now
        try:
            report = await collect_garbage(
                self.blobs, self.meta, now=now, grace_s=self.gc_grace_s,
                pending_access=self.recorder.last_access, on_delete=self._collected,
            )
        except Exception:
            self.gc_failed_runs_total += 1
            self.gc_last_duration_s = self._timer() - started
            raise
        self.gc_last_duration_s = duration_s = self._timer() - started
        self.last_gc = report
        self.gc_runs_total += 1
        self.gc_deleted_blobs_total += report.deleted
        self.gc_freed_bytes_total += report.freed_bytes
        self.gc_links_removed_total += report.links_removed
        event(
            log, "gc_collected", examined=report.examined, deleted=report.deleted,
            freed_bytes=report.freed_bytes, links_removed=report.links_removed,
            kept=dict(report.kept), failed=report.failed, grace_s=self.gc_grace_s,
            duration_s=round(duration_s, 6),
        )
        return report

    # -- internals -------------------------------------------------------------------------------

    def _collected(self, digest: str, size: int) -> None:
        self._report_drop(digest)

    def _report_drop(self, digest: str) -> None:
        if self._on_evict is not None:
            try:
                self._on_evict(digest)
            except Exception:
                log.exception("on_evict(%s) failed", digest)

    async def _evict_lru(self, tally: _Eviction, now: float,
                         policy: EvictionPolicy | None = None) -> None:
        policy = policy or self.policy
        decided: set[str] = set()
        limit = LRU_BATCH
        recent_after = now - policy.min_age_s
        while tally.freed < tally.wanted:
            rows = self.meta.least_recently_used(limit)
            batch: list[Candidate] = []
            for digest, recorded in rows:
                if digest in decided:
                    continue
                decided.add(digest)
                candidate = self._candidate(digest, recorded)
                if candidate is None:
                    tally.stale += 1
                else:
                    batch.append(candidate)
            await self._evict_batch(batch, tally, now, policy)
            if tally.freed >= tally.wanted:
                return
            if len(rows) < limit:  # every row seen: look for blobs that have none (rate-limited)
                if now - self._seeded_at < self.interval_s:
                    return
                added = await self._seed_access_rows(now)
                tally.seeded += added
                if added == 0:
                    return
                continue
            if rows and rows[-1][1] > recent_after:
                return  # the rest of the rows are newer still: all within the grace period
            limit *= 4

    async def _evict_batch(self, batch: list[Candidate], tally: _Eviction, now: float,
                           policy: EvictionPolicy) -> None:
        """Apply the policy to ``batch`` (LRU order) until enough is freed or none is left.

        A planned blob may be spared at its delete (touched meanwhile): the policy is then asked
        again about the candidates after the last one it chose.
        """
        remaining = batch
        while remaining and tally.freed < tally.wanted:
            plan = policy.choose(remaining, tally.wanted - tally.freed, now)
            for reason, count in plan.kept.items():
                tally.keep(reason, count)
            if not plan.evict:
                return
            for candidate in plan.evict:
                await self._evict_one(candidate, now, tally, policy)
            remaining = remaining[remaining.index(plan.evict[-1]) + 1 :]

    def _candidate(self, digest: str, recorded: float) -> Candidate | None:
        """The blob behind an access row as the policy sees it; None (row dropped) when gone."""
        try:
            parsed = parse_digest(digest)
            size = self.blobs.size(parsed)
        except RegistryError:
            size = None
        if size is None:
            self.meta.forget_access(digest)
            return None
        mtime = self.blobs.mtime(parsed) or 0.0
        pending = self.recorder.last_access(digest) or 0.0
        return Candidate(
            digest=digest,
            size_bytes=size,
            last_access=max(recorded, mtime, pending),
            in_progress=self.blobs.in_progress(parsed) is not None,
        )

    async def _evict_one(self, candidate: Candidate, now: float, tally: _Eviction,
                         policy: EvictionPolicy) -> None:
        # Check again and delete with no await in between: a request on this loop cannot touch
        # or start writing the blob half-way.
        fresh = self._candidate(candidate.digest, candidate.last_access)
        if fresh is None:
            tally.stale += 1
            return
        reason = policy.keep_reason(fresh, now)
        if reason is not None:
            tally.keep(reason)
            return
        digest = parse_digest(fresh.digest)
        try:
            deleted = self.blobs.delete(digest)
        except OSError as exc:
            tally.failed += 1
            log.warning("evicting %s failed: %s", fresh.digest, exc)
            return
        self.meta.forget_access(fresh.digest)
        if not deleted:
            tally.stale += 1
            return
        tally.freed += fresh.size_bytes
        tally.evicted.append(fresh.digest)
        self.evicted_blobs_total += 1
        self.evicted_bytes_total += fresh.size_bytes
        self._report_drop(fresh.digest)
        if len(tally.evicted) % YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def _seed_access_rows(self, now: float) -> int:
        """Give every committed blob without an access row one (its mtime); return how many.

        A directory walk (in a worker thread): done on the first eviction of the process, then
        at most once per ``interval_s`` when the rows run out before the quota is met.
        """
        self._seeded_at = now
        blobs, meta = self.blobs, self.meta

        def seed() -> int:
            missing: list[tuple[str | Digest, float]] = []
            for digest in blobs.digests():
                if meta.last_access(digest) is not None:
                    continue
                mtime = blobs.mtime(digest)
                if mtime is not None:
                    missing.append((digest, mtime))
            if missing:
                meta.touch_many(missing)
            return len(missing)

        return await asyncio.to_thread(seed)

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("storage maintenance failed; retrying on the next tick")

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _log_eviction(self, report: EvictionReport) -> None:
        event(
            log, "cache_evicted", blobs=len(report.evicted), freed_bytes=report.freed_bytes,
            store_bytes_before=report.store_bytes_before,
            store_bytes_after=report.store_bytes_after, max_bytes=self.policy.max_bytes,
            kept=report.kept, stale_rows=report.stale_rows, seeded=report.seeded,
        )
        if report.short_bytes > 0:
            log.warning(
                "cache over quota: %d bytes could not be evicted (every other blob is in use or "
                "was accessed within %.0f s); store %d bytes, quota %d",
                report.short_bytes, self.policy.min_age_s, report.store_bytes_after,
                self.policy.max_bytes,
            )

    def stats(self) -> dict[str, int]:
        """Counters for metrics: passes, evictions, GC, expired uploads, access flushes."""
        return {
            "gc_runs_total": self.gc_runs_total,
            "gc_failed_runs_total": self.gc_failed_runs_total,
            "gc_deleted_blobs_total": self.gc_deleted_blobs_total,
            "gc_freed_bytes_total": self.gc_freed_bytes_total,
            "gc_links_removed_total": self.gc_links_removed_total,
            "passes": self.passes,
            "failed_passes": self.failed_passes,
            "evicted_blobs_total": self.evicted_blobs_total,
            "evicted_bytes_total": self.evicted_bytes_total,
            "uploads_expired_total": self.uploads_expired_total,
            "accesses_flushed_total": self.recorder.flushed_total,
            "access_flush_failures_total": self.recorder.flush_failures_total,
            "accesses_pending": self.recorder.pending,
        }
