"""Garbage collection on a real store: what is garbage, what is kept and why.

The metadata clock (link times, upload sessions) is a ``FakeClock`` at ``NOW`` (2033); blob files
get their mtimes from ``os.utime``. Their ctimes are the real time of the test run, years before
``NOW``, so they count as old, except in the test about the ctime itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.gc import (
    KEPT_READ,
    KEPT_REFERENCED,
    KEPT_WRITING,
    KEPT_YOUNG,
    GcReport,
    NotADataDir,
    collect_garbage,
    collect_offline,
)
from p2preg.storage.layout import StoreLayout
from p2preg.storage.lock import DataDirLock, DataDirLocked
from p2preg.storage.metadata import MetadataStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NOW = 2_000_000_000.0
GRACE_S = 3600.0
OLD = NOW - 2 * GRACE_S


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(OLD)  # links and sessions are made at OLD unless a test moves the clock


async def put_old(blobs: BlobStore, data: bytes, mtime: float = OLD) -> Digest:
    digest = await blobs.put_bytes(data)
    os.utime(blobs.path(digest), (mtime, mtime))
    return digest


async def collect(blobs: BlobStore, meta: MetadataStore, **options: object) -> GcReport:
    return await collect_garbage(blobs, meta, now=NOW, grace_s=GRACE_S, **options)  # type: ignore[arg-type]


# -- what is garbage -----------------------------------------------------------------------------


async def test_an_old_blob_nothing_names_is_deleted_with_its_access_row(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    garbage = await put_old(blobs, b"nobody wants me")
    meta.touch(garbage, OLD)

    report = await collect(blobs, meta)

    assert (report.examined, report.deleted, report.freed_bytes) == (1, 1, len(b"nobody wants me"))
    assert not blobs.has(garbage) and meta.last_access(garbage) is None


async def test_manifests_and_what_they_reference_are_roots(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    manifest = await put_old(blobs, b"a manifest")
    config = await put_old(blobs, b"a config")
    layer = await put_old(blobs, b"a layer")
    meta.put_manifest("app", manifest, OCI_MANIFEST, 10, references=[config, layer])
    for digest in (config, layer):
        meta.link_blob("app", digest, 8)

    report = await collect(blobs, meta)

    assert report.deleted == 0 and report.links_removed == 0
    assert report.kept == {KEPT_REFERENCED: 3}
    assert all(blobs.has(d) for d in (manifest, config, layer))


async def test_a_deleted_images_blobs_go_and_its_repository_leaves_the_catalog(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    manifest = await put_old(blobs, b"the manifest of app:1")
    layer = await put_old(blobs, b"app's own layer")
    meta.link_blob("app", layer, 15)
    meta.put_manifest("app", manifest, OCI_MANIFEST, 21, tag="1", references=[layer])
    meta.delete_manifest("app", manifest)
    deleted: list[tuple[str, int]] = []

    report = await collect(blobs, meta, on_delete=lambda d, size: deleted.append((d, size)))

    assert sorted(deleted) == sorted([(str(manifest), 21), (str(layer), 15)])
    assert report.links_removed == 1 and report.freed_bytes == 36
    assert not blobs.has(manifest) and not blobs.has(layer)
    assert not meta.blob_linked("app", layer) and meta.repositories() == []


async def test_a_layer_shared_with_a_live_image_stays_but_the_dead_link_goes(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    shared = await put_old(blobs, b"a base layer")
    other = await put_old(blobs, b"the other image")
    meta.link_blob("old", shared, 12)
    meta.link_blob("live", shared, 12)
    meta.put_manifest("live", other, OCI_MANIFEST, 15, tag="latest", references=[shared])

    report = await collect(blobs, meta)

    assert report.deleted == 0 and report.links_removed == 1
    assert blobs.has(shared) and meta.blob_linked("live", shared)
    assert not meta.blob_linked("old", shared) and meta.repositories() == ["live"]


# -- what is kept, and why -----------------------------------------------------------------------


async def test_a_blob_committed_within_the_grace_period_is_kept(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    young = await put_old(blobs, b"pushed a moment ago", mtime=NOW - 60)
    report = await collect(blobs, meta)
    assert report.deleted == 0 and report.kept == {KEPT_YOUNG: 1} and blobs.has(young)


async def test_an_upload_finished_now_is_young_even_if_its_bytes_were_written_long_ago(
    blobs: BlobStore, meta: MetadataStore, tmp_path: Path
) -> None:
    # The last PATCH was two hours ago; the PUT that commits it is now. The hard link into place
    # changes the file's ctime, not its mtime.
    data = tmp_path / "store" / "tmp" / "upload-data"
    data.write_bytes(b"uploaded slowly")
    digest = Digest.of_bytes(b"uploaded slowly")
    now = time.time()  # compared with real file times: the one test on the real clock
    os.utime(data, (now - 7200, now - 7200))
    await blobs.commit_file(data, digest)
    assert (blobs.mtime(digest) or now) < now - GRACE_S

    report = await collect_garbage(blobs, meta, now=now, grace_s=GRACE_S)

    assert report.deleted == 0 and blobs.has(digest)


async def test_recommitting_an_old_blob_refreshes_its_grace(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    ancient = 1_000_000_000.0  # 2001: surely before the file system's "now"
    digest = await blobs.put_bytes(b"pushed again")
    os.utime(blobs.path(digest), (ancient, ancient))
    await blobs.put_bytes(b"pushed again")
    assert (blobs.mtime(digest) or 0) > ancient


async def test_blobs_being_written_again_are_spared(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    garbage = await put_old(blobs, b"being re-fetched")
    writer = blobs.writer(expected=garbage)
    report = await collect(blobs, meta)
    assert report.deleted == 0 and report.kept == {KEPT_WRITING: 1}
    await writer.abort()
    assert (await collect(blobs, meta)).deleted == 1


async def test_a_blob_read_within_the_grace_period_is_kept_with_its_links(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    layer = await put_old(blobs, b"checked with HEAD before a push")
    meta.link_blob("app", layer, 31)
    meta.touch(layer, NOW - 10)

    report = await collect(blobs, meta)

    assert report.kept == {KEPT_READ: 1} and report.links_removed == 0
    assert blobs.has(layer) and meta.blob_linked("app", layer)


async def test_an_access_not_flushed_yet_protects_the_blob_on_the_second_look(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    layer = await put_old(blobs, b"read a second ago")
    pending = {str(layer): NOW - 1}

    report = await collect(blobs, meta, pending_access=pending.get)

    assert report.kept == {KEPT_READ: 1} and blobs.has(layer)


async def test_a_repository_being_pushed_to_keeps_its_older_layers(
    blobs: BlobStore, meta: MetadataStore, clock: FakeClock
) -> None:
    # Layer one was pushed long ago; layer two just now: the manifest naming both is next.
    first = await put_old(blobs, b"layer one of a long push")
    meta.link_blob("app", first, 24)
    clock.advance(NOW - 60 - OLD)
    second = await put_old(blobs, b"layer two", mtime=NOW - 60)
    meta.link_blob("app", second, 9)

    report = await collect(blobs, meta)

    assert report.deleted == 0 and report.links_removed == 0
    assert blobs.has(first) and meta.blob_linked("app", first)


async def test_an_open_upload_session_keeps_the_repositorys_layers(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    first = await put_old(blobs, b"pushed before a three-hour upload")
    meta.link_blob("app", first, 33)
    meta.create_upload("app", "0b5e4f1e-aaaa-4bbb-8ccc-123456789abc", OLD)

    report = await collect(blobs, meta)

    assert report.deleted == 0 and meta.blob_linked("app", first)


# -- how a pass behaves --------------------------------------------------------------------------


async def test_a_dry_run_reports_everything_and_changes_nothing(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    garbage = await put_old(blobs, b"garbage")
    layer = await put_old(blobs, b"layer of a deleted image")
    meta.link_blob("gone", layer, 24)
    listed: list[str] = []

    report = await collect(blobs, meta, dry_run=True, on_delete=lambda d, _: listed.append(d))

    assert report.deleted == 2 and report.links_removed == 1 and report.freed_bytes == 31
    assert sorted(listed) == sorted([str(garbage), str(layer)])
    assert blobs.has(garbage) and blobs.has(layer) and meta.blob_linked("gone", layer)


async def test_a_failing_on_delete_callback_does_not_stop_the_collection(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    for i in range(3):
        await put_old(blobs, b"garbage %d" % i)

    def broken(digest: str, size: int) -> None:
        raise RuntimeError("gossip is down")

    report = await collect(blobs, meta, on_delete=broken)

    assert report.deleted == 3 and blobs.count() == 0


async def test_many_blobs_are_collected_in_one_pass(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    kept = await put_old(blobs, b"the only manifest")
    meta.put_manifest("app", kept, OCI_MANIFEST, 17)
    for i in range(40):  # more than YIELD_EVERY: the pass yields to the loop on the way
        await put_old(blobs, b"garbage number %d" % i)

    report = await collect(blobs, meta)

    assert report.examined == 41 and report.deleted == 40 and blobs.count() == 1


async def test_a_negative_grace_is_refused(blobs: BlobStore, meta: MetadataStore) -> None:
    with pytest.raises(ValueError):
        await collect_garbage(blobs, meta, now=NOW, grace_s=-1)


# -- offline (p2preg gc) -------------------------------------------------------------------------


async def test_offline_collection_refuses_a_data_dir_a_node_holds(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    garbage = await put_old(blobs, b"garbage")
    with DataDirLock(blobs.layout), pytest.raises(DataDirLocked):
        await collect_offline(blobs.layout, now=NOW, grace_s=0)
    assert blobs.has(garbage)
    report = await collect_offline(blobs.layout, now=NOW, grace_s=0)
    assert report.deleted == 1 and not blobs.has(garbage)


async def test_offline_collection_refuses_a_directory_without_a_store(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path / "not-a-store")
    layout.root.mkdir()
    with pytest.raises(NotADataDir, match="not a p2preg data directory"):
        await collect_offline(layout, now=NOW, grace_s=0)
    assert list(layout.root.iterdir()) == []


async def test_a_blob_committed_again_after_the_verdict_is_kept_not_deleted(
    tmp_path: Path,
) -> None:
    # delete_if_older re-checks the age under the lock a re-commit's utime holds.
    layout = StoreLayout(tmp_path / "store")
    blobs = BlobStore(layout)
    digest = await blobs.put_bytes(b"layer")
    path = blobs.path(digest)
    old = 1_000_000.0
    os.utime(path, (old, old))
    cutoff = os.stat(path).st_ctime + 1  # ctime is now: the "upload finished now" case
    assert blobs.delete_if_older(digest, cutoff) is True
    digest = await blobs.put_bytes(b"layer2")
    assert blobs.delete_if_older(digest, 0.0) is False  # committed after the cutoff: kept
    assert blobs.has(digest)
    assert blobs.delete_if_older(Digest.of_bytes(b"never stored"), 0.0) is None
