"""Garbage collection run by the maintenance loop: when it runs, what it reports, where it logs.

A real store in a temp dir, a ``FakeClock`` at ``NOW`` (2033) for the loop and the metadata; blob
mtimes are set with ``os.utime``. The loop is driven with ``FakeClock.advance`` and
``wait_for_passes``; nothing sleeps on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.eviction import EvictionMode
from p2preg.storage.gc import KEPT_READ
from p2preg.storage.maintenance import Maintenance
from p2preg.storage.metadata import MetadataStore

NOW = 2_000_000_000.0
GRACE_S = 3600.0
GC_INTERVAL_S = 600.0
INTERVAL_S = 60.0
FLUSH_S = 5.0


class Drops:
    """Collects ``on_evict`` calls, as the gossip layer's ``advertise_drop`` would."""

    def __init__(self) -> None:
        self.digests: list[str] = []

    def __call__(self, digest: str) -> None:
        self.digests.append(digest)


class Ticks:
    """A duration timer that advances 0.25 s per reading."""

    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        self.value += 0.25
        return self.value


def upkeep_for(
    blobs: BlobStore,
    meta: MetadataStore,
    clock: FakeClock,
    *,
    mode: EvictionMode = "registry",
    gc_interval_s: float = GC_INTERVAL_S,
    on_evict: Drops | None = None,
) -> Maintenance:
    return Maintenance(
        blobs, meta, None, clock, max_bytes=0, min_age_s=0, upload_max_age_s=0,
        interval_s=INTERVAL_S, flush_interval_s=FLUSH_S, mode=mode, on_evict=on_evict,
        gc_interval_s=gc_interval_s, gc_grace_s=GRACE_S, timer=Ticks(),
    )


async def put_at(blobs: BlobStore, data: bytes, mtime: float) -> Digest:
    digest = await blobs.put_bytes(data)
    os.utime(blobs.path(digest), (mtime, mtime))
    return digest


@pytest.fixture
async def running(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> AsyncIterator[tuple[Maintenance, Drops]]:
    drops = Drops()
    upkeep = upkeep_for(blobs, meta, clock, on_evict=drops)
    upkeep.start()
    await asyncio.wait_for(upkeep.wait_for_passes(1), 10)  # the first pass (and GC) runs at once
    yield upkeep, drops
    await upkeep.stop()


async def test_the_first_pass_collects_and_reports_each_deleted_blob_as_a_drop(
    running: tuple[Maintenance, Drops],
) -> None:
    upkeep, drops = running
    assert upkeep.gc_runs_total == 1 and drops.digests == []  # an empty store at start
    assert upkeep.last_report is not None and upkeep.last_report.gc is not None


async def test_garbage_is_collected_every_gc_interval_not_every_pass(
    running: tuple[Maintenance, Drops], blobs: BlobStore, clock: FakeClock
) -> None:
    upkeep, drops = running
    garbage = await put_at(blobs, b"an old unreferenced blob", NOW - 2 * GRACE_S)

    clock.advance(INTERVAL_S)  # a pass, but GC is not due before NOW + GC_INTERVAL_S
    await asyncio.wait_for(upkeep.wait_for_passes(2), 10)
    assert blobs.has(garbage) and upkeep.gc_runs_total == 1
    assert upkeep.last_report is not None and upkeep.last_report.gc is None

    clock.advance(GC_INTERVAL_S - INTERVAL_S)
    await asyncio.wait_for(upkeep.wait_until(lambda: upkeep.gc_runs_total == 2), 10)
    assert not blobs.has(garbage)
    assert drops.digests == [str(garbage)]
    assert upkeep.gc_deleted_blobs_total == 1
    assert upkeep.gc_freed_bytes_total == len(b"an old unreferenced blob")
    assert upkeep.gc_last_duration_s == 0.25 and upkeep.gc_last_run_at == clock.now()


async def test_a_blob_younger_than_the_grace_survives_until_it_is_older(
    running: tuple[Maintenance, Drops], blobs: BlobStore, clock: FakeClock
) -> None:
    upkeep, drops = running
    young = await put_at(blobs, b"pushed, its manifest not yet", NOW)

    clock.advance(GC_INTERVAL_S)
    await asyncio.wait_for(upkeep.wait_until(lambda: upkeep.gc_runs_total == 2), 10)
    assert blobs.has(young) and drops.digests == []

    clock.advance(GRACE_S)
    await asyncio.wait_for(upkeep.wait_until(lambda: upkeep.gc_runs_total == 3), 10)
    assert not blobs.has(young) and drops.digests == [str(young)]


async def test_a_touch_still_in_the_recorder_protects_a_blob(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    layer = await put_at(blobs, b"HEAD by a client a moment ago", NOW - 2 * GRACE_S)
    upkeep = upkeep_for(blobs, meta, clock)
    upkeep.recorder.touch(layer)

    report = await upkeep.collect(clock.now())

    assert report.kept == {KEPT_READ: 1} and blobs.has(layer)


async def test_gc_interval_zero_never_collects(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    garbage = await put_at(blobs, b"garbage", NOW - 2 * GRACE_S)
    upkeep = upkeep_for(blobs, meta, clock, gc_interval_s=0)

    for _ in range(3):
        report = await upkeep.run_once()
        assert report.gc is None
        clock.advance(GC_INTERVAL_S)

    assert blobs.has(garbage) and upkeep.gc_runs_total == 0


async def test_a_mirror_never_collects_garbage(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    fetched_for_a_peer = await put_at(blobs, b"cached, linked nowhere", NOW - 2 * GRACE_S)
    upkeep = upkeep_for(blobs, meta, clock, mode="mirror")

    report = await upkeep.run_once()

    assert report.gc is None and upkeep.gc_interval_s == 0
    assert blobs.has(fetched_for_a_peer)


async def test_each_collection_logs_one_event_with_its_counts(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    await put_at(blobs, b"garbage one", NOW - 2 * GRACE_S)
    await put_at(blobs, b"young", NOW)
    upkeep = upkeep_for(blobs, meta, clock)

    with caplog.at_level(logging.INFO, logger="p2preg.storage.maintenance"):
        await upkeep.run_once()

    events = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "gc_collected"]
    assert len(events) == 1
    fields = events[0].fields  # type: ignore[attr-defined]
    assert fields["examined"] == 2 and fields["deleted"] == 1
    assert fields["freed_bytes"] == len(b"garbage one") and fields["kept"] == {"young": 1}
    assert fields["duration_s"] == 0.25
    json.dumps(fields)  # the JSON formatter can write it


class BrokenIndexMetadata(MetadataStore):
    """Fails every link query, as a corrupt database would."""

    def _all(self, sql: str, params: tuple[object, ...]) -> list[object]:
        if "blob_links l" in sql:
            raise OSError(5, "Input/output error")
        return super()._all(sql, params)


async def test_a_failing_collection_is_logged_and_counted_and_the_pass_goes_on(
    blobs: BlobStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    await put_at(blobs, b"garbage", NOW - 2 * GRACE_S)
    with BrokenIndexMetadata(blobs.layout.db_path, clock=clock) as meta:
        upkeep = upkeep_for(blobs, meta, clock)

        report = await upkeep.run_once()

        assert upkeep.passes == 1 and report.gc is None
        assert upkeep.gc_failed_runs_total == 1 and upkeep.gc_runs_total == 0
        assert "garbage collection failed" in caplog.text


def test_bad_gc_settings_are_refused(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    for interval, grace in ((-1.0, GRACE_S), (GC_INTERVAL_S, 0.0)):
        with pytest.raises(ValueError):
            Maintenance(blobs, meta, None, clock, max_bytes=0, min_age_s=0, upload_max_age_s=0,
                        interval_s=INTERVAL_S, gc_interval_s=interval, gc_grace_s=grace)
