"""The background scrub and on-demand checks: rotten blobs leave the store, good ones stay.

Time is a fake clock that records every sleep (and moves forward by it), so pacing is asserted
exactly, with no wall-clock waits.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore, CorruptBlob
from p2preg.storage.scrub import MIB, Scrubber, ScrubPacer
from tests.support.bitrot import flip_bit


class SleepRecordingClock(FakeClock):
    """A fake clock whose ``sleep`` returns at once, after moving time forward by its length."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


def flip_byte(blobs: BlobStore, digest: Digest, offset: int = 10) -> None:
    flip_bit(blobs.layout.blob_path(digest), offset)


async def put(blobs: BlobStore, seed: int, size: int) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return await blobs.put_bytes(data), data


@pytest.mark.parametrize(
    ("rate", "steps", "expected"),
    [
        (1.0, [(0.0, 1), (0.0, 1)], [1.0, 2.0]),  # back to back: the debt adds up
        (2.0, [(0.0, 4), (5.0, 2)], [2.0, 1.0]),  # idle time after the debt is paid is not saved
        (4.0, [(0.0, 4), (0.5, 4)], [1.0, 1.5]),  # a step before the debt is paid waits for it
    ],
)
def test_pacer_spreads_bytes_at_the_rate(
    rate: float, steps: list[tuple[float, int]], expected: list[float]
) -> None:
    pacer = ScrubPacer(rate)
    pacer.reset(0.0)
    assert [pacer.after(now, nbytes) for now, nbytes in steps] == expected


async def test_a_pass_finds_a_flipped_byte_and_quarantines_only_that_blob(
    blobs: BlobStore,
) -> None:
    good, good_data = await put(blobs, 1, 300_000)
    bad, bad_data = await put(blobs, 2, 200_000)
    flip_byte(blobs, bad)
    told: list[Digest] = []
    blobs.corruption_listeners.append(told.append)
    scrubber = Scrubber(blobs, SleepRecordingClock(), rate_bytes_s=100 * MIB, interval_s=60)

    report = await scrubber.scrub_pass()

    assert (report.checked, report.corrupt) == (2, 1)
    assert report.bytes == len(good_data) + len(bad_data)
    assert told == [bad]
    assert not blobs.has(bad) and blobs.is_quarantined(bad)
    assert blobs.layout.quarantine_path(bad).read_bytes() != bad_data  # kept for forensics
    assert blobs.has(good) and blobs.layout.blob_path(good).read_bytes() == good_data
    assert blobs.corrupt_total["scrub"] == 1
    assert blobs.count() == 1 and blobs.total_bytes() == len(good_data)
    assert (await scrubber.scrub_pass()).corrupt == 0  # a second pass finds nothing new


async def test_a_pass_reads_at_most_the_configured_rate(blobs: BlobStore) -> None:
    for seed in range(3):
        await put(blobs, seed, MIB)
    clock = SleepRecordingClock(100.0)
    scrubber = Scrubber(blobs, clock, rate_bytes_s=MIB / 2, interval_s=60,
                        chunk_bytes=MIB // 4)

    report = await scrubber.scrub_pass()

    assert report.bytes == 3 * MIB
    assert report.duration_s == pytest.approx(6.0)  # 3 MiB at 0.5 MiB/s
    assert max(clock.slept) <= 0.5 + 1e-9  # one chunk's worth at a time, never a burst


async def test_a_mirror_deletes_a_rotten_blob_instead_of_keeping_it(blobs: BlobStore) -> None:
    blobs.keep_quarantined = False
    bad, _ = await put(blobs, 3, 50_000)
    flip_byte(blobs, bad)
    assert await blobs.check(bad, found_by="scrub") == "corrupt"
    assert not blobs.has(bad)
    assert not blobs.layout.quarantine_path(bad).exists()
    assert not blobs.is_quarantined(bad)


async def test_quarantine_spares_a_good_copy_committed_after_the_bad_one_was_read(
    blobs: BlobStore,
) -> None:
    digest, data = await put(blobs, 4, 10_000)
    flip_byte(blobs, digest)
    job = blobs.open_rehash(digest)
    assert job is not None
    while not job.done:
        job.step()
    # Meanwhile the rotten file is replaced by a good copy (deleted, committed again).
    blobs.delete(digest)
    await blobs.put_bytes(data)
    try:
        assert not await blobs.quarantine(digest, inode=job.inode, found_by="scrub")
    finally:
        job.close()
    assert blobs.has(digest) and blobs.corrupt_total["scrub"] == 0


async def test_a_manifest_read_checks_the_bytes_every_time(blobs: BlobStore) -> None:
    digest, data = await put(blobs, 5, 2_000)
    assert await blobs.read_verified(digest) == data
    flip_byte(blobs, digest)
    with pytest.raises(CorruptBlob):
        await blobs.read_verified(digest)
    assert blobs.is_quarantined(digest) and blobs.corrupt_total["read"] == 1


async def test_peer_reports_are_checked_at_once_and_share_one_rehash(blobs: BlobStore) -> None:
    good, _ = await put(blobs, 6, 100_000)
    bad, _ = await put(blobs, 7, 100_000)
    flip_byte(blobs, bad)
    clock = SleepRecordingClock()
    scrubber = Scrubber(blobs, clock, rate_bytes_s=0, interval_s=60, report_cooldown_s=30)

    verdicts = await asyncio.gather(*(scrubber.verify_now(bad) for _ in range(3)))
    assert verdicts == ["corrupt"] * 3
    assert blobs.corrupt_total["peer_report"] == 1
    assert await scrubber.verify_now(bad) == "absent"

    assert await scrubber.verify_now(good) == "ok"
    flip_byte(blobs, good)
    assert await scrubber.verify_now(good) == "ok"  # within the cooldown: not hashed again
    clock.advance(31)
    assert await scrubber.verify_now(good) == "corrupt"


class HeldChecks:
    """Wraps ``BlobStore.check``: every call waits for ``release`` before it re-hashes."""

    def __init__(self, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        real = blobs.check

        async def held(digest: Digest, *, found_by: str) -> str:
            self.calls += 1
            self.entered.set()
            await self.release.wait()
            return await real(digest, found_by=found_by)

        monkeypatch.setattr(blobs, "check", held)


async def test_a_reporter_that_leaves_does_not_cancel_the_check_the_others_wait_for(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, _ = await put(blobs, 9, 100_000)
    flip_byte(blobs, bad)
    held = HeldChecks(blobs, monkeypatch)
    scrubber = Scrubber(blobs, SleepRecordingClock(), rate_bytes_s=0, interval_s=60)

    first = asyncio.create_task(scrubber.verify_now(bad))
    await held.entered.wait()  # the first report started the shared check
    second = asyncio.create_task(scrubber.verify_now(bad))
    await asyncio.sleep(0)  # the second report joined it
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    held.release.set()

    assert await second == "corrupt"
    assert held.calls == 1 and blobs.corrupt_total["peer_report"] == 1
    assert not blobs.has(bad)
    await scrubber.stop()


async def test_stop_cancels_a_check_nobody_waits_for_any_more(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = await put(blobs, 10, 1_000)
    held = HeldChecks(blobs, monkeypatch)
    scrubber = Scrubber(blobs, SleepRecordingClock(), rate_bytes_s=0, interval_s=60)
    only = asyncio.create_task(scrubber.verify_now(digest))
    await held.entered.wait()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    assert scrubber._checking  # still running without its reporter
    await scrubber.stop()
    assert not scrubber._checking and blobs.has(digest)


async def test_the_background_task_runs_a_pass_every_interval(blobs: BlobStore) -> None:
    bad, _ = await put(blobs, 8, 1_000)
    flip_byte(blobs, bad)
    found = asyncio.Event()
    blobs.corruption_listeners.append(lambda digest: found.set())
    clock = FakeClock(0.0)
    scrubber = Scrubber(blobs, clock, rate_bytes_s=MIB, interval_s=3600)
    scrubber.start()
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert blobs.has(bad)  # nothing before the first interval
        clock.advance(3600)
        await asyncio.wait_for(found.wait(), 10)
        assert not blobs.has(bad)
    finally:
        await scrubber.stop()


async def test_scrub_off_starts_no_task(blobs: BlobStore) -> None:
    scrubber = Scrubber(blobs, FakeClock(), rate_bytes_s=0, interval_s=60)
    scrubber.start()
    assert not scrubber.enabled and scrubber._task is None
    await scrubber.stop()
