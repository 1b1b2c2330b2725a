"""Garbage collection: only unreferenced, idle, old blobs go."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.gc import GcReport, collect_garbage
from p2preg.storage.metadata import MetadataStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NOW = 2_000_000_000.0
OLD = NOW - 7200


@pytest.fixture
def meta(blobs: BlobStore) -> Iterator[MetadataStore]:
    with MetadataStore(blobs.layout.db_path, clock=FakeClock(NOW)) as store:
        yield store


async def put_old(blobs: BlobStore, data: bytes) -> Digest:
    digest = await blobs.put_bytes(data)
    os.utime(blobs.path(digest), (OLD, OLD))
    return digest


async def test_unreferenced_old_blobs_are_deleted_and_referenced_ones_kept(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    linked = await put_old(blobs, b"linked layer")
    manifest = await put_old(blobs, b"a manifest")
    referenced = await put_old(blobs, b"a config")
    garbage = await put_old(blobs, b"nobody wants me")
    meta.link_blob("app", linked, 12)
    meta.put_manifest("app", manifest, OCI_MANIFEST, 10, references=[referenced])
    meta.touch(garbage, OLD)

    report = await collect_garbage(blobs, meta, now=NOW, grace_s=3600)

    assert report == GcReport(examined=4, deleted=1, freed_bytes=len(b"nobody wants me"))
    assert not blobs.has(garbage)
    assert blobs.has(linked) and blobs.has(manifest) and blobs.has(referenced)
    assert meta.last_access(garbage) is None


async def test_young_blobs_survive_the_grace_period(blobs: BlobStore, meta: MetadataStore) -> None:
    young = await blobs.put_bytes(b"just committed, not linked yet")
    report = await collect_garbage(blobs, meta, now=os.stat(blobs.path(young)).st_mtime + 10)
    assert report.deleted == 0 and blobs.has(young)


async def test_recommitting_an_old_blob_refreshes_its_grace(
    blobs: BlobStore, meta: MetadataStore
) -> None:
    ancient = 1_000_000_000.0  # 2001: surely before the file system's "now"
    digest = await blobs.put_bytes(b"pushed again")
    os.utime(blobs.path(digest), (ancient, ancient))
    await blobs.put_bytes(b"pushed again")
    assert (blobs.mtime(digest) or 0) > ancient


async def test_dry_run_deletes_nothing(blobs: BlobStore, meta: MetadataStore) -> None:
    garbage = await put_old(blobs, b"garbage")
    report = await collect_garbage(blobs, meta, now=NOW, dry_run=True)
    assert report.deleted == 1 and blobs.has(garbage)


async def test_blobs_being_written_again_are_spared(
    blobs: BlobStore, meta: MetadataStore, tmp_path: Path
) -> None:
    garbage = await put_old(blobs, b"being re-fetched")
    writer = blobs.writer(expected=garbage)
    assert (await collect_garbage(blobs, meta, now=NOW)).deleted == 0
    await writer.abort()
    assert (await collect_garbage(blobs, meta, now=NOW)).deleted == 1
