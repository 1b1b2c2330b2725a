"""``MetadataStore`` tag confirmations: when the upstream last said where a tag points, kept
across restarts and carried over from databases of schema version 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2preg.clock import FakeClock
from p2preg.storage.metadata import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    MetadataStore,
    TagConfirmation,
)

REPO = "docker.io/library/app"
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
T0 = 1_700_000_000.0
MEDIA = "application/vnd.oci.image.manifest.v1+json"


def stored(meta: MetadataStore, *digests: str, tag: str | None = None) -> None:
    for digest in digests:
        meta.put_manifest(REPO, digest, MEDIA, 10, tag=tag)


def test_a_confirmation_is_recorded_and_points_the_tag(meta: MetadataStore) -> None:
    stored(meta, OLD, NEW, tag=None)
    assert meta.confirm_tag(REPO, "latest", NEW, T0)
    assert meta.resolve_tag(REPO, "latest") == NEW
    assert meta.tag_confirmation(REPO, "latest") == TagConfirmation(NEW, T0)


def test_a_later_confirmation_moves_the_tag_and_an_older_one_changes_nothing(
        meta: MetadataStore) -> None:
    stored(meta, OLD, NEW)
    assert meta.confirm_tag(REPO, "latest", OLD, T0)
    assert meta.confirm_tag(REPO, "latest", NEW, T0 + 10)
    assert not meta.confirm_tag(REPO, "latest", OLD, T0 + 5)  # e.g. a peer's older answer
    assert not meta.confirm_tag(REPO, "latest", NEW, T0 + 10)
    assert meta.tag_confirmation(REPO, "latest") == TagConfirmation(NEW, T0 + 10)
    assert meta.resolve_tag(REPO, "latest") == NEW


def test_a_manifest_that_is_not_stored_cannot_be_confirmed(meta: MetadataStore) -> None:
    assert not meta.confirm_tag(REPO, "latest", NEW, T0)
    stored(meta, OLD)
    assert not meta.confirm_tag(REPO, "latest", NEW, T0)
    assert meta.tag_confirmation(REPO, "latest") is None
    assert meta.resolve_tag(REPO, "latest") is None


def test_a_tag_moved_without_confirmation_has_none(meta: MetadataStore) -> None:
    stored(meta, OLD)
    meta.confirm_tag(REPO, "latest", OLD, T0)
    meta.put_manifest(REPO, NEW, MEDIA, 10, tag="latest")  # a push moves the tag
    assert meta.tag_confirmation(REPO, "latest") is None


def test_confirmations_go_with_their_manifest(meta: MetadataStore) -> None:
    stored(meta, OLD)
    meta.confirm_tag(REPO, "latest", OLD, T0)
    assert meta.delete_manifest(REPO, OLD)
    assert meta.tag_confirmation(REPO, "latest") is None
    stored(meta, OLD, tag="latest")  # cached again: no confirmation until one is recorded
    assert meta.tag_confirmation(REPO, "latest") is None


def test_a_confirmation_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    with MetadataStore(path, clock=FakeClock(T0)) as meta:
        stored(meta, OLD)
        meta.confirm_tag(REPO, "latest", OLD, T0 + 42)
    with MetadataStore(path) as reopened:
        assert reopened.tag_confirmation(REPO, "latest") == TagConfirmation(OLD, T0 + 42)


def test_a_version_1_database_is_migrated_and_its_tags_count_as_confirmed_when_written(
        tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    db = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO repositories (id, name, created_at) VALUES (1, ?, ?)", (REPO, T0))
    db.execute("INSERT INTO manifests (repo_id, digest, media_type, size, created_at)"
               " VALUES (1, ?, ?, 10, ?)", (OLD, MEDIA, T0))
    db.execute("INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (1, 'latest', ?, ?)",
               (OLD, T0 + 300))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    with MetadataStore(path) as meta:
        assert meta.schema_version == SCHEMA_VERSION == 2
        assert meta.resolve_tag(REPO, "latest") == OLD
        assert meta.tag_confirmation(REPO, "latest") == TagConfirmation(OLD, T0 + 300)
