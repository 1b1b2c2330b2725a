"""The background scrub: re-hash every committed blob, slowly, and quarantine the ones that rotted.

Owns: ``ScrubPacer`` (pure: how long to wait after hashing some bytes so the average stays at
the configured rate), ``Scrubber`` (one asyncio task running a pass every ``interval_s``, and
``verify_now`` for a blob a peer reported as wrong, re-hashed at once and unpaced) and its
Prometheus collector (``register_metrics``).

Rules:

1. A pass lists the committed digests once (a directory walk in a worker thread) and re-hashes
   them one at a time, ``chunk_bytes`` per worker-thread step; after each step the pacer says how
   long to sleep (``clock.sleep``), so a pass reads at most ``rate_bytes_s`` on average and the
   disk stays free for clients. A blob deleted meanwhile (eviction, GC) is skipped.
2. The file is held open while it is hashed; a mismatch quarantines that inode only
   (``BlobStore.quarantine``), so a good copy committed meanwhile stays. Quarantining counts the
   blob in ``BlobStore.corrupt_total`` and tells the store's corruption listeners (the node: in
   mirror mode a gossip ``drop``; the next pull fetches the blob again).
3. ``verify_now`` joins a check of the same digest already running and answers ``ok`` without
   hashing again for ``report_cooldown_s`` after a check found it good (many peers reporting one
   blob cost one re-hash). The shared check runs in its own task: a reporter that goes away
   (cancelled) leaves it running for the others; ``stop`` cancels it.

Time comes from the injected clock (``FakeClock`` in tests). Must not import aiohttp, sqlite3 or
the registry, fetch, gossip or p2p packages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2preg.clock import Clock
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import HASH_CHUNK_BYTES, BlobStore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
FOUND_BY = ("scrub", "read", "peer_report")
DEFAULT_REPORT_COOLDOWN_S = 60.0
MIN_SLEEP_S = 0.01
"""Shorter waits are not slept (the debt stays in the pacer and is slept with the next one)."""
_MAX_RECENT = 4096


class ScrubPacer:
    """Spreads hashing over time: each byte costs ``1 / rate_bytes_s`` seconds of budget."""

    def __init__(self, rate_bytes_s: float) -> None:
        if rate_bytes_s <= 0:
            raise ValueError("rate_bytes_s must be positive")
        self.rate_bytes_s = rate_bytes_s
        self._free_at: float | None = None

    def reset(self, now: float) -> None:
        """Start a fresh budget (the start of a pass: idle time is not saved up)."""
        self._free_at = now

    def after(self, now: float, nbytes: int) -> float:
        """Seconds to wait after hashing ``nbytes`` at ``now``."""
        start = now if self._free_at is None else max(now, self._free_at)
        self._free_at = start + nbytes / self.rate_bytes_s
        return max(0.0, self._free_at - now)


@dataclass
class ScrubReport:
    """What one pass did."""

    checked: int = 0
    bytes: int = 0
    corrupt: int = 0
    absent: int = 0
    duration_s: float = 0.0


@dataclass
class ScrubStats:
    """Totals since start (read by the metrics collector)."""

    passes: int = 0
    blobs: int = 0
    bytes: int = 0
    last_pass_duration_s: float = 0.0
    last_pass_end: float = 0.0
    reports: int = 0


class Scrubber:
    """Background re-hashing of the blob store (see the module docstring)."""

    def __init__(
        self,
        blobs: BlobStore,
        clock: Clock,
        *,
        rate_bytes_s: float,
        interval_s: float,
        chunk_bytes: int = HASH_CHUNK_BYTES,
        report_cooldown_s: float = DEFAULT_REPORT_COOLDOWN_S,
    ) -> None:
        self.blobs = blobs
        self.clock = clock
        self.rate_bytes_s = rate_bytes_s
        self.interval_s = interval_s
        self.chunk_bytes = chunk_bytes
        self.report_cooldown_s = report_cooldown_s
        self.stats = ScrubStats()
        self._task: asyncio.Task[None] | None = None
        self._checking: dict[Digest, asyncio.Task[str]] = {}
        self._recent_ok: OrderedDict[Digest, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate_bytes_s > 0

    def start(self) -> None:
        """Run passes in the background (a no-op when the rate is 0: scrub off)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop the passes and any check of a reported blob still running."""
        tasks: list[asyncio.Task[object]] = list(self._checking.values())
        if self._task is not None:
            tasks.append(self._task)
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            try:
                await self.scrub_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrub pass failed")

    async def scrub_pass(self) -> ScrubReport:
        """Re-hash every committed blob once, paced; quarantine mismatches."""
        started = self.clock.now()
        pacer = ScrubPacer(self.rate_bytes_s) if self.enabled else None
        if pacer is not None:
            pacer.reset(started)
        report = ScrubReport()
        digests = await asyncio.to_thread(lambda: list(self.blobs.digests()))
        for digest in digests:
            verdict = await self._check(digest, pacer, report)
            if verdict == "absent":
                report.absent += 1
                continue
            report.checked += 1
            if verdict == "corrupt":
                report.corrupt += 1
        report.duration_s = self.clock.now() - started
        self.stats.passes += 1
        self.stats.last_pass_duration_s = report.duration_s
        self.stats.last_pass_end = self.clock.now()
        log.info("scrub pass done: %d blobs, %d bytes, %d corrupt, %.1f s", report.checked,
                 report.bytes, report.corrupt, report.duration_s,
                 extra={"fields": {"event": "scrub_pass", "blobs": report.checked,
                                   "bytes": report.bytes, "corrupt": report.corrupt,
                                   "duration_s": round(report.duration_s, 3)}})
        return report

    async def verify_now(self, digest: Digest) -> str:
        """Re-hash ``digest`` at once (a peer said it got wrong bytes): ``ok``, ``corrupt`` or
        ``absent``. Concurrent reports of one digest share one check."""
        self.stats.reports += 1
        checked_at = self._recent_ok.get(digest)
        if checked_at is not None and self.clock.now() - checked_at < self.report_cooldown_s:
            return "ok"
        task = self._checking.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._check_reported(digest))
            self._checking[digest] = task
            task.add_done_callback(lambda done: self._reported_checked(digest, done))
        # The check is its own task: a reporter that leaves (cancelled, its connection closed)
        # does not cancel it for the others waiting on it.
        return await asyncio.shield(task)

    async def _check_reported(self, digest: Digest) -> str:
        verdict = await self.blobs.check(digest, found_by="peer_report")
        if verdict == "ok":
            self._recent_ok[digest] = self.clock.now()
            self._recent_ok.move_to_end(digest)
            while len(self._recent_ok) > _MAX_RECENT:
                self._recent_ok.popitem(last=False)
        else:
            self._recent_ok.pop(digest, None)
        return verdict

    def _reported_checked(self, digest: Digest, task: asyncio.Task[str]) -> None:
        if self._checking.get(digest) is task:
            del self._checking[digest]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters re-raise it; with none left, nobody must

    async def _check(self, digest: Digest, pacer: ScrubPacer | None, report: ScrubReport) -> str:
        job = await asyncio.to_thread(self.blobs.open_rehash, digest)
        if job is None:
            return "absent"
        try:
            while not job.done:
                nbytes = await asyncio.to_thread(job.step, self.chunk_bytes)
                report.bytes += nbytes
                self.stats.bytes += nbytes
                if pacer is not None:
                    delay = pacer.after(self.clock.now(), nbytes)
                    if delay >= MIN_SLEEP_S:
                        await self.clock.sleep(delay)
            self.stats.blobs += 1
            if job.hexdigest() == digest.hex:
                return "ok"
            # still open: its inode number cannot be reused by another file meanwhile (Rehash)
            await self.blobs.quarantine(digest, inode=job.inode, found_by="scrub")
            return "corrupt"
        finally:
            job.close()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_ScrubCollector(self))


class _ScrubCollector(Collector):
    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber

    def collect(self) -> Iterator[Metric]:
        scrubber = self._scrubber
        stats = scrubber.stats
        corrupt = CounterMetricFamily(
            "p2preg_scrub_corrupt", "Stored blobs whose bytes no longer matched their digest "
            "(quarantined), by who found them: scrub, read (a manifest read), peer_report.",
            labels=["found_by"])
        for found_by in FOUND_BY:
            corrupt.add_metric([found_by], scrubber.blobs.corrupt_total[found_by])
        yield corrupt
        yield CounterMetricFamily("p2preg_scrub_bytes", "Bytes re-hashed by the scrub.",
                                  value=stats.bytes)
        yield CounterMetricFamily("p2preg_scrub_blobs", "Blobs re-hashed by the scrub.",
                                  value=stats.blobs)
        yield CounterMetricFamily("p2preg_scrub_passes", "Completed scrub passes.",
                                  value=stats.passes)
        yield CounterMetricFamily("p2preg_scrub_peer_reports", "Wrong-bytes reports from peers "
                                  "(each re-verifies the blob at once).", value=stats.reports)
        yield GaugeMetricFamily("p2preg_scrub_last_pass_duration_seconds", "How long the last "
                                "completed scrub pass took.", value=stats.last_pass_duration_s)
        yield GaugeMetricFamily("p2preg_scrub_last_pass_end_timestamp_seconds", "When the last "
                                "scrub pass ended (0: none yet).", value=stats.last_pass_end)
