"""Storage maintenance on a real store: batched access times, upload expiry, quota eviction.

Every test runs on a store in a temp dir with a ``FakeClock`` at ``NOW`` (wall-clock seconds in
2033, so the files' real mtimes are set explicitly with ``os.utime``). Nothing sleeps on the wall
clock: the loop is driven with ``FakeClock.advance`` and ``Maintenance.wait_for_passes``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Iterable

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.content import LocalContentSource
from p2preg.storage.blobs import BlobStore
from p2preg.storage.eviction import KEPT_IN_PROGRESS, KEPT_RECENT
from p2preg.storage.maintenance import AccessRecorder, Maintenance
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

NOW = 2_000_000_000.0
MIN_AGE_S = 600.0
OLD = NOW - 86_400.0
BLOB_BYTES = 1000
INTERVAL_S = 60.0
FLUSH_S = 5.0


@pytest.fixture
def uploads(blobs: BlobStore, meta: MetadataStore, clock: FakeClock) -> UploadManager:
    return UploadManager(blobs.layout, blobs, meta, clock)


class Drops:
    """Collects ``on_evict`` calls, as the gossip layer's ``advertise_drop`` would."""

    def __init__(self) -> None:
        self.digests: list[str] = []

    def __call__(self, digest: str) -> None:
        self.digests.append(digest)


def maintenance(
    blobs: BlobStore,
    meta: MetadataStore,
    uploads: UploadManager | None,
    clock: FakeClock,
    *,
    max_bytes: int,
    on_evict: Drops | None = None,
    mode: str = "mirror",
) -> Maintenance:
    return Maintenance(
        blobs, meta, uploads, clock,
        max_bytes=max_bytes, min_age_s=MIN_AGE_S, upload_max_age_s=3600.0,
        interval_s=INTERVAL_S, flush_interval_s=FLUSH_S, on_evict=on_evict,
        mode=mode,  # type: ignore[arg-type]
    )


async def put_blobs(
    blobs: BlobStore, count: int, rng: random.Random, *, mtime: float = OLD
) -> list[Digest]:
    """``count`` distinct blobs of ``BLOB_BYTES`` each, committed at ``mtime``."""
    digests = []
    for _ in range(count):
        digest = await blobs.put_bytes(rng.randbytes(BLOB_BYTES))
        os.utime(blobs.path(digest), (mtime, mtime))
        digests.append(digest)
    return digests


def accessed_in_order(meta: MetadataStore, digests: Iterable[Digest], start: float = OLD) -> None:
    """Access rows one second apart: the first digest is the least recently used."""
    meta.touch_many([(digest, start + i) for i, digest in enumerate(digests)])


# -- the access-time recorder --------------------------------------------------------------------


async def test_touches_stay_in_memory_until_a_flush_writes_them_in_one_batch(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    a, b = await put_blobs(blobs, 2, rng)
    recorder = AccessRecorder(meta, clock)
    for _ in range(500):  # a hot blob served 500 times is one pending entry
        recorder.touch(a)
    clock.advance(1)
    recorder.touch(b)

    assert meta.last_access(a) is None and meta.last_access(b) is None
    assert recorder.pending == 2 and recorder.last_access(a) == NOW

    assert await recorder.flush() == 2
    assert meta.last_access(a) == NOW and meta.last_access(b) == NOW + 1
    assert recorder.pending == 0 and recorder.last_access(a) is None
    assert await recorder.flush() == 0


async def test_recorded_access_times_never_move_backwards(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    digest = Digest.of_bytes(b"x")
    meta.touch(digest, NOW + 100)
    recorder = AccessRecorder(meta, clock)
    recorder.touch(digest)
    await recorder.flush()
    assert meta.last_access(digest) == NOW + 100


class FlakyMetadata(MetadataStore):
    """Fails once in each method named in ``failing``, as on a full or failing disk."""

    failing: set[str]

    def _maybe_fail(self, method: str) -> None:
        if method in self.failing:
            self.failing.discard(method)
            raise OSError(28, "No space left on device")

    def touch_many(self, accesses: Iterable[tuple[str | Digest, float]]) -> None:
        self._maybe_fail("touch_many")
        super().touch_many(accesses)

    def least_recently_used(self, limit: int) -> list[tuple[str, float]]:
        self._maybe_fail("least_recently_used")
        return super().least_recently_used(limit)


def flaky(blobs: BlobStore, clock: FakeClock, *failing: str) -> FlakyMetadata:
    meta = FlakyMetadata(blobs.layout.db_path, clock=clock)
    meta.failing = set(failing)
    return meta


async def test_a_failed_flush_keeps_the_batch_for_the_next_one(
    blobs: BlobStore, clock: FakeClock
) -> None:
    digest = Digest.of_bytes(b"y")
    with flaky(blobs, clock, "touch_many") as meta:
        recorder = AccessRecorder(meta, clock)
        recorder.touch(digest)
        with pytest.raises(OSError):
            await recorder.flush()
        assert recorder.pending == 1 and recorder.flush_failures_total == 1
        assert await recorder.flush() == 1
        assert meta.last_access(digest) == NOW


# -- one maintenance pass, end to end ------------------------------------------------------------


async def test_one_pass_over_quota_evicts_the_least_recently_used_and_keeps_busy_blobs(
    blobs: BlobStore, meta: MetadataStore, uploads: UploadManager, clock: FakeClock,
    rng: random.Random,
) -> None:
    b = await put_blobs(blobs, 10, rng)  # 10 000 bytes, quota 6 000: free down to 5 400
    accessed_in_order(meta, b)  # b[0] least recently used ... b[9] most
    refetching = blobs.writer(expected=b[0])  # a writer is producing b[0] again
    os.utime(blobs.path(b[2]), (NOW - 5, NOW - 5))  # b[2] was (re)committed just now
    drops = Drops()
    upkeep = maintenance(blobs, meta, uploads, clock, max_bytes=6000, on_evict=drops)
    upkeep.recorder.touch(b[1])  # served a moment ago, not flushed yet
    filling = blobs.writer(expected=Digest.of_bytes(b"a layer still downloading"))
    await filling.write(b"a layer still")
    await filling.flush()

    report = await upkeep.run_once()

    evicted = [str(d) for d in b[3:8]]
    assert drops.digests == evicted
    assert report.eviction.evicted == tuple(evicted)
    assert report.eviction.freed_bytes == 5 * BLOB_BYTES
    # b[0] busy, b[2] recent; b[1] was flushed first, so it moved to the end of the LRU order.
    assert report.eviction.kept == {KEPT_IN_PROGRESS: 1, KEPT_RECENT: 1}
    assert blobs.total_bytes() == 5 * BLOB_BYTES <= 5400
    assert blobs.count() == 5
    for digest in b[3:8]:
        assert not blobs.has(digest) and meta.last_access(digest) is None
    for digest in (b[0], b[1], b[2], b[8], b[9]):
        assert blobs.has(digest)
    assert meta.last_access(b[1]) == NOW  # the pass flushed the pending touch first
    assert report.accesses_flushed == 1
    # The download in progress was not disturbed and still commits.
    await filling.write(b" downloading")
    assert await filling.commit() == Digest.of_bytes(b"a layer still downloading")
    await refetching.abort()


async def test_within_the_quota_nothing_is_evicted(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    await put_blobs(blobs, 5, rng)
    drops = Drops()
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=5000, on_evict=drops)

    report = await upkeep.run_once()

    assert report.eviction.evicted == () and report.eviction.wanted_bytes == 0
    assert report.eviction.seeded == 0  # no directory walk while within quota
    assert blobs.count() == 5 and drops.digests == []


async def test_registry_mode_never_evicts_even_far_over_the_quota(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 5, rng)
    accessed_in_order(meta, b)
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=1000, mode="registry")

    report = await upkeep.run_once()

    assert report.eviction.evicted == () and blobs.count() == 5


async def test_blobs_without_an_access_row_are_ranked_by_their_commit_time(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    tracked = await put_blobs(blobs, 3, rng)
    accessed_in_order(meta, tracked, start=OLD)
    untracked_older = await put_blobs(blobs, 1, rng, mtime=OLD - 3600)
    untracked_newer = await put_blobs(blobs, 1, rng, mtime=OLD + 3600)
    drops = Drops()
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=4000, on_evict=drops)

    report = await upkeep.run_once()  # 5 000 bytes: free 1 400 -> two blobs

    assert report.eviction.seeded == 2
    assert drops.digests == [str(untracked_older[0]), str(tracked[0])]
    assert meta.last_access(untracked_newer[0]) == OLD + 3600


async def test_access_rows_of_blobs_already_gone_are_dropped_and_free_nothing(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 3, rng)
    ghost = Digest.of_bytes(b"deleted behind our back")
    meta.touch(ghost, OLD - 1)
    meta.touch("not-a-digest", OLD - 2)
    accessed_in_order(meta, b)
    drops = Drops()
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=2500, on_evict=drops)

    report = await upkeep.run_once()  # free 3 000 - 2 250 = 750 -> one blob

    assert report.eviction.stale_rows == 2
    assert drops.digests == [str(b[0])]
    assert meta.last_access(ghost) is None and meta.last_access("not-a-digest") is None


async def test_a_blob_touched_while_the_pass_runs_is_spared(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 6, rng)
    accessed_in_order(meta, b)
    upkeep: Maintenance

    def serve_the_next_one(digest: str) -> None:
        # A GET for b[1] arrives while b[0] is being evicted (same event loop).
        if digest == str(b[0]):
            upkeep.recorder.touch(b[1])

    drops = Drops()

    def on_evict(digest: str) -> None:
        drops(digest)
        serve_the_next_one(digest)

    upkeep = Maintenance(
        blobs, meta, None, clock, max_bytes=5000, min_age_s=MIN_AGE_S, upload_max_age_s=0,
        interval_s=INTERVAL_S, on_evict=on_evict,
    )

    report = await upkeep.run_once()  # 6 000 bytes: free 1 500 -> two blobs

    assert drops.digests == [str(b[0]), str(b[2])]
    assert blobs.has(b[1]) and report.eviction.kept == {KEPT_RECENT: 1}


async def test_a_failing_on_evict_callback_does_not_stop_the_eviction(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 4, rng)
    accessed_in_order(meta, b)

    def broken(digest: str) -> None:
        raise RuntimeError("gossip is down")

    upkeep = Maintenance(
        blobs, meta, None, clock, max_bytes=3000, min_age_s=MIN_AGE_S, upload_max_age_s=0,
        interval_s=INTERVAL_S, on_evict=broken,
    )
    report = await upkeep.run_once()
    assert len(report.eviction.evicted) == 2 and blobs.count() == 2


async def test_a_large_eviction_goes_past_the_first_batch_of_access_rows(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("p2preg.storage.maintenance.LRU_BATCH", 4)
    b = await put_blobs(blobs, 40, rng)
    accessed_in_order(meta, b)
    for digest in b[:6]:  # the six least recently used were committed again just now
        os.utime(blobs.path(digest), (NOW, NOW))
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=20_000)

    report = await upkeep.run_once()  # 40 000 bytes: free 22 000 -> 22 blobs

    assert report.eviction.evicted == tuple(str(d) for d in b[6:28])
    assert blobs.total_bytes() == 18_000


async def test_idle_upload_sessions_expire(
    blobs: BlobStore, meta: MetadataStore, uploads: UploadManager, clock: FakeClock
) -> None:
    stale = uploads.create("app")
    clock.advance(3000)
    fresh = uploads.create("app")
    clock.advance(1000)  # stale is 4 000 s old, fresh 1 000 s: the limit is 3 600 s
    upkeep = maintenance(blobs, meta, uploads, clock, max_bytes=0)

    report = await upkeep.run_once()

    assert report.uploads_expired == 1
    assert meta.get_upload(stale.uuid) is None and meta.get_upload(fresh.uuid) is not None
    assert not blobs.layout.upload_dir(stale.uuid).exists()


async def test_after_eviction_a_linked_blob_reads_as_unknown_so_the_mirror_refetches_it(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    (layer,) = await put_blobs(blobs, 1, rng)
    meta.link_blob("docker.io/library/app", layer, BLOB_BYTES)
    meta.touch(layer, OLD)
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=500)

    await upkeep.run_once()

    # The link stays (the mirror's memory of the repository); the bytes are gone.
    assert meta.blob_linked("docker.io/library/app", layer)
    assert blobs.size(layer) is None
    with pytest.raises(RegistryError) as caught:
        await LocalContentSource(blobs, meta).blob("docker.io/library/app", layer, None)
    assert caught.value.code is ErrorCode.BLOB_UNKNOWN


# -- the loop ------------------------------------------------------------------------------------


@pytest.fixture
async def running(
    blobs: BlobStore, meta: MetadataStore, uploads: UploadManager, clock: FakeClock
) -> AsyncIterator[tuple[Maintenance, Drops]]:
    drops = Drops()
    upkeep = maintenance(blobs, meta, uploads, clock, max_bytes=6000, on_evict=drops)
    upkeep.start()
    await asyncio.wait_for(upkeep.wait_for_passes(1), 10)  # the first pass runs at once
    yield upkeep, drops
    await upkeep.stop()


async def test_the_loop_flushes_every_tick_and_runs_a_pass_every_interval(
    running: tuple[Maintenance, Drops], meta: MetadataStore, clock: FakeClock
) -> None:
    upkeep, _ = running
    digest = Digest.of_bytes(b"hot")
    upkeep.recorder.touch(digest)

    ticks = upkeep.ticks
    clock.advance(FLUSH_S)
    await asyncio.wait_for(upkeep.wait_until(lambda: upkeep.ticks > ticks), 10)
    assert meta.last_access(digest) == NOW
    assert upkeep.passes == 1  # a flush tick is not a pass

    clock.advance(INTERVAL_S - FLUSH_S)
    await asyncio.wait_for(upkeep.wait_for_passes(2), 10)
    assert upkeep.passes == 2


async def test_a_tick_that_finds_the_store_over_quota_evicts_without_waiting_for_the_interval(
    running: tuple[Maintenance, Drops], blobs: BlobStore, meta: MetadataStore, clock: FakeClock,
    rng: random.Random,
) -> None:
    upkeep, drops = running
    b = await put_blobs(blobs, 7, rng)
    accessed_in_order(meta, b)

    clock.advance(FLUSH_S)
    await asyncio.wait_for(upkeep.wait_for_passes(2), 10)

    assert drops.digests == [str(b[0]), str(b[1])]  # 7 000 -> 5 000 <= 5 400
    assert clock.now() - NOW < INTERVAL_S


async def test_stop_writes_the_pending_accesses(
    running: tuple[Maintenance, Drops], meta: MetadataStore
) -> None:
    upkeep, _ = running
    digest = Digest.of_bytes(b"served just before shutdown")
    upkeep.recorder.touch(digest)
    await upkeep.stop()
    assert meta.last_access(digest) == NOW


async def test_a_failed_flush_does_not_hold_eviction_back(
    blobs: BlobStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 3, rng)
    with flaky(blobs, clock, "touch_many") as meta:
        meta.touch(b[0], OLD)
        meta.touch(b[1], OLD + 1)
        meta.touch(b[2], OLD + 2)
        upkeep = maintenance(blobs, meta, None, clock, max_bytes=2500)  # free 750: one blob
        upkeep.recorder.touch(b[0])  # cannot be written, but still protects b[0]

        report = await upkeep.run_once()

        assert report.accesses_flushed == 0 and upkeep.recorder.pending == 1
        assert report.eviction.evicted == (str(b[1]),)


async def test_a_failing_pass_is_logged_and_the_loop_goes_on(
    blobs: BlobStore, clock: FakeClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    b = await put_blobs(blobs, 3, rng)
    with flaky(blobs, clock, "least_recently_used") as meta:
        accessed_in_order(meta, b)
        upkeep = maintenance(blobs, meta, None, clock, max_bytes=2500)  # free 750: one blob
        upkeep.start()
        try:
            await asyncio.wait_for(upkeep.wait_for_passes(1), 10)
            assert upkeep.failed_passes == 1 and "maintenance failed" in caplog.text
            clock.advance(FLUSH_S)  # still over quota: the next tick tries again
            await asyncio.wait_for(upkeep.wait_for_passes(2), 10)
            assert upkeep.passes == 1 and blobs.count() == 2
        finally:
            await upkeep.stop()


async def test_blobs_committed_later_without_an_access_row_are_found_on_a_later_pass(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, rng: random.Random
) -> None:
    b = await put_blobs(blobs, 3, rng)
    accessed_in_order(meta, b)
    upkeep = maintenance(blobs, meta, None, clock, max_bytes=3000)
    await upkeep.run_once()  # within quota: nothing to do
    clock.advance(INTERVAL_S)
    meta.touch_many([(digest, clock.now()) for digest in b])  # all three are in use now
    (unseen,) = await put_blobs(blobs, 1, rng)  # committed by a writer that never touched it

    report = await upkeep.run_once()

    assert report.eviction.evicted == (str(unseen),) and report.eviction.seeded == 1


def test_bad_settings_are_refused(blobs: BlobStore, meta: MetadataStore, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        Maintenance(blobs, meta, None, clock, max_bytes=0, min_age_s=0, upload_max_age_s=0,
                    interval_s=0)
    with pytest.raises(ValueError):
        Maintenance(blobs, meta, None, clock, max_bytes=-1, min_age_s=0, upload_max_age_s=0,
                    interval_s=60)

