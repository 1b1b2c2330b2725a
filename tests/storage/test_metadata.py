"""MetadataStore: durable SQLite settings, pagination, tags, links, cascades, referrers, uploads."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.metadata import SCHEMA_VERSION, ManifestRecord, MetadataStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def d(n: int) -> str:
    return f"sha256:{n:064x}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def meta(tmp_path: Path, clock: FakeClock) -> Iterator[MetadataStore]:
    with MetadataStore(tmp_path / "metadata.db", clock=clock) as store:
        yield store


def test_database_is_wal_full_sync_with_foreign_keys(meta: MetadataStore) -> None:
    db = sqlite3.connect(meta.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert meta._scalar("PRAGMA synchronous") == 2  # FULL
    assert meta._scalar("PRAGMA foreign_keys") == 1
    assert meta.schema_version == SCHEMA_VERSION


def test_reopening_keeps_data_and_schema(tmp_path: Path) -> None:
    with MetadataStore(tmp_path / "m.db") as first:
        first.link_blob("library/busybox", d(1), 10)
    with MetadataStore(tmp_path / "m.db") as second:
        assert second.blob_linked("library/busybox", d(1))
        assert second.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "m.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer p2preg"):
        MetadataStore(tmp_path / "m.db")


def test_catalog_is_lexical_and_paginates_with_last_and_n(meta: MetadataStore) -> None:
    for name in ["b/x", "a", "c", "a/b", "a-b", "b"]:
        meta.link_blob(name, d(1), 1)
    assert meta.repositories() == ["a", "a-b", "a/b", "b", "b/x", "c"]
    assert meta.repositories(n=2) == ["a", "a-b"]
    assert meta.repositories(last="a-b", n=2) == ["a/b", "b"]
    assert meta.repositories(last="b/x") == ["c"]
    assert meta.repositories(last="c") == []
    assert meta.repositories(n=0) == []
    assert meta.repositories(last="aa") == ["b", "b/x", "c"], "last need not exist"


def test_negative_n_is_a_pagination_error(meta: MetadataStore) -> None:
    with pytest.raises(RegistryError) as info:
        meta.tags("a", n=-1)
    assert info.value.code is ErrorCode.PAGINATION_NUMBER_INVALID


def test_tags_are_bytewise_sorted_and_paginated(meta: MetadataStore) -> None:
    meta.put_manifest("app", d(1), OCI_MANIFEST, 100)
    for tag in ["v2", "V1", "latest", "v10", "_x", "1.0"]:
        meta.put_manifest("app", d(1), OCI_MANIFEST, 100, tag=tag)
    assert meta.tags("app") == ["1.0", "V1", "_x", "latest", "v10", "v2"]
    assert meta.tags("app", last="_x", n=2) == ["latest", "v10"]
    assert meta.tags("other") == []


def test_a_tag_moves_to_the_newest_manifest(meta: MetadataStore) -> None:
    meta.put_manifest("app", d(1), OCI_MANIFEST, 100, tag="latest")
    assert meta.resolve_tag("app", "latest") == d(1)
    meta.put_manifest("app", d(2), OCI_MANIFEST, 200, tag="latest")
    assert meta.resolve_tag("app", "latest") == d(2)
    assert meta.manifest_tags("app", d(1)) == []
    assert meta.get_manifest("app", d(1)) is not None, "the old manifest stays by digest"
    assert meta.resolve_tag("other", "latest") is None


def test_manifest_record_round_trips(meta: MetadataStore, clock: FakeClock) -> None:
    meta.put_manifest(
        "app",
        Digest("sha256", f"{7:064x}"),
        OCI_MANIFEST,
        321,
        subject=d(1),
        artifact_type="application/vnd.example.sbom",
        annotations={"org.opencontainers.image.created": "2026-11-26"},
        references=[d(3), d(4)],
    )
    assert meta.get_manifest("app", d(7)) == ManifestRecord(
        repo="app",
        digest=d(7),
        media_type=OCI_MANIFEST,
        size=321,
        subject=d(1),
        artifact_type="application/vnd.example.sbom",
        annotations={"org.opencontainers.image.created": "2026-11-26"},
        created_at=clock.now(),
    )
    assert meta.manifest_references("app", d(7)) == [d(3), d(4)]
    assert meta.get_manifest("other", d(7)) is None


def test_manifests_are_scoped_to_their_repository(meta: MetadataStore) -> None:
    meta.put_manifest("a", d(1), OCI_MANIFEST, 1, tag="t")
    assert meta.get_manifest("b", d(1)) is None
    assert meta.resolve_tag("b", "t") is None
    assert meta.repository_exists("a") and not meta.repository_exists("b")


def test_delete_tag_keeps_the_manifest(meta: MetadataStore) -> None:
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag="latest")
    assert meta.delete_tag("app", "latest")
    assert not meta.delete_tag("app", "latest")
    assert meta.resolve_tag("app", "latest") is None
    assert meta.get_manifest("app", d(1)) is not None


def test_deleting_a_manifest_cascades_to_its_tags_and_references(meta: MetadataStore) -> None:
    meta.link_blob("app", d(3), 30)
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag="a", references=[d(3)])
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag="b")
    meta.put_manifest("app", d(2), OCI_MANIFEST, 1, tag="c")
    assert meta.delete_manifest("app", d(1))
    assert not meta.delete_manifest("app", d(1))
    assert meta.tags("app") == ["c"]
    assert meta.manifest_references("app", d(1)) == []
    assert meta.blob_linked("app", d(3)), "layer links are separate from the manifest"


def test_blob_referenced_sees_links_manifests_and_references(meta: MetadataStore) -> None:
    assert not meta.blob_referenced(d(9))
    meta.link_blob("a", d(1), 1)
    meta.put_manifest("b", d(2), OCI_MANIFEST, 1, references=[d(3)])
    assert meta.blob_referenced(d(1)) and meta.blob_referenced(d(2)) and meta.blob_referenced(d(3))
    assert meta.unlink_blob("a", d(1))
    assert not meta.blob_referenced(d(1))
    meta.delete_manifest("b", d(2))
    assert not meta.blob_referenced(d(2)) and not meta.blob_referenced(d(3))


def test_blob_links_are_per_repository_and_idempotent(meta: MetadataStore) -> None:
    meta.link_blob("a", d(1), 5)
    meta.link_blob("a", d(1), 5)
    assert meta.blob_linked("a", d(1))
    assert not meta.blob_linked("b", d(1))
    assert not meta.unlink_blob("b", d(1))
    assert meta.unlink_blob("a", d(1))
    assert not meta.unlink_blob("a", d(1))


def test_a_repository_disappears_when_its_last_content_goes(meta: MetadataStore) -> None:
    meta.link_blob("app", d(3), 1)
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag="x")
    meta.delete_manifest("app", d(1))
    assert meta.repositories() == ["app"], "a linked blob keeps the repository"
    meta.unlink_blob("app", d(3))
    assert meta.repositories() == []
    assert not meta.repository_exists("app")


def test_referrers_filter_by_subject_and_artifact_type(meta: MetadataStore) -> None:
    sbom, sig = "application/vnd.example.sbom", "application/vnd.example.sig"
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1)
    meta.put_manifest("app", d(12), OCI_MANIFEST, 2, subject=d(1), artifact_type=sbom)
    meta.put_manifest("app", d(11), OCI_MANIFEST, 3, subject=d(1), artifact_type=sig)
    meta.put_manifest("app", d(13), OCI_MANIFEST, 4, subject=d(2), artifact_type=sbom)
    meta.put_manifest("other", d(14), OCI_MANIFEST, 5, subject=d(1), artifact_type=sbom)
    assert [r.digest for r in meta.referrers("app", d(1))] == [d(11), d(12)]
    assert [r.digest for r in meta.referrers("app", d(1), sbom)] == [d(12)]
    assert meta.referrers("app", d(1), "application/none") == []
    assert meta.referrers("app", d(5)) == []
    meta.delete_manifest("app", d(12))
    assert [r.digest for r in meta.referrers("app", d(1))] == [d(11)]


def test_referrers_survive_the_deletion_of_their_subject(meta: MetadataStore) -> None:
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1)
    meta.put_manifest("app", d(2), OCI_MANIFEST, 1, subject=d(1))
    meta.delete_manifest("app", d(1))
    assert [r.digest for r in meta.referrers("app", d(1))] == [d(2)]


def test_put_manifest_is_all_or_nothing(meta: MetadataStore) -> None:
    meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag="old")
    with pytest.raises(sqlite3.IntegrityError):
        meta.put_manifest("app", d(2), OCI_MANIFEST, -1, tag="old")  # size CHECK fails
    assert meta.resolve_tag("app", "old") == d(1)
    assert meta.get_manifest("app", d(2)) is None


def test_hostile_strings_are_data_not_sql(meta: MetadataStore) -> None:
    name = "x'; DROP TABLE manifests; --"
    meta.put_manifest(name, d(1), OCI_MANIFEST, 1, tag="' OR '1'='1")
    assert meta.tags(name) == ["' OR '1'='1"]
    assert meta.resolve_tag(name, "anything' OR '1'='1") is None
    assert meta.get_manifest(name, d(1)) is not None


def test_access_times_only_move_forward_and_order_eviction(meta: MetadataStore) -> None:
    meta.touch(d(1), 100.0)
    meta.touch(d(2), 50.0)
    meta.touch(d(3), 75.0)
    meta.touch(d(1), 10.0)
    assert meta.last_access(d(1)) == 100.0
    assert meta.least_recently_used(2) == [(d(2), 50.0), (d(3), 75.0)]
    meta.forget_access(d(2))
    assert meta.last_access(d(2)) is None


def test_upload_sessions_record_offsets(meta: MetadataStore) -> None:
    created = meta.create_upload("app", "0f-1", 5.0)
    assert meta.get_upload("0f-1") == created
    assert created.offset == 0 and created.repo == "app"
    assert meta.set_upload_offset("0f-1", 4096)
    assert meta.get_upload("0f-1") is not None
    assert meta.get_upload("0f-1").offset == 4096  # type: ignore[union-attr]
    meta.create_upload("app", "0e-2", 6.0)
    assert [u.uuid for u in meta.uploads()] == ["0f-1", "0e-2"]
    assert meta.delete_upload("0f-1")
    assert not meta.delete_upload("0f-1")
    assert not meta.set_upload_offset("0f-1", 1)
    assert meta.get_upload("0f-1") is None


def test_touch_many_records_a_batch(meta: MetadataStore) -> None:
    meta.touch(d(1), 500.0)
    meta.touch_many([(d(1), 400.0), (d(2), 600.0), (Digest("sha256", f"{3:064x}"), 700.0)])
    assert meta.last_access(d(1)) == 500.0
    assert meta.least_recently_used(10) == [(d(1), 500.0), (d(2), 600.0), (d(3), 700.0)]


TAG_CHARS = "aAzZ09_.-"


@settings(max_examples=25, derandomize=True, deadline=None)
@given(
    names=st.sets(
        st.text(alphabet=TAG_CHARS, min_size=1, max_size=6).filter(lambda t: t[0] not in ".-"),
        max_size=25,
    ),
    last=st.one_of(st.none(), st.text(alphabet=TAG_CHARS, max_size=6)),
    n=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
)
def test_tag_pages_are_slices_of_the_sorted_tag_list(
    names: set[str], last: str | None, n: int | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp, MetadataStore(Path(tmp) / "m.db") as meta:
        meta.put_manifest("app", d(1), OCI_MANIFEST, 1)
        for name in names:
            meta.put_manifest("app", d(1), OCI_MANIFEST, 1, tag=name)
        expected = sorted(t for t in names if last is None or t.encode() > last.encode())
        assert meta.tags("app", last=last, n=n) == expected[:n]
        # Walking page by page with the last tag of each page visits every tag exactly once.
        if n:
            walked: list[str] = []
            cursor = None
            while page := meta.tags("app", last=cursor, n=n):
                walked += page
                cursor = page[-1]
            assert walked == sorted(names)
