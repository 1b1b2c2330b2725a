"""StoreLayout: the documented tree, and that nothing derived from a request escapes the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.layout import StoreLayout, is_upload_uuid

HEX = "ab" + "0" * 62


def test_blob_path_is_algorithm_prefix_hex(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    assert layout.blob_path(Digest("sha256", HEX)) == tmp_path / "blobs" / "sha256" / "ab" / HEX


def test_fixed_locations(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    assert layout.tmp_dir == tmp_path / "tmp"
    assert layout.uploads_dir == tmp_path / "uploads"
    assert layout.db_path == tmp_path / "metadata.db"
    assert layout.upload_data_path("0a-1b") == tmp_path / "uploads" / "0a-1b" / "data"


def test_ensure_creates_the_tree_and_is_idempotent(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path / "a" / "b")
    layout.ensure()
    layout.ensure()
    for directory in (layout.blobs_dir, layout.tmp_dir, layout.uploads_dir):
        assert directory.is_dir()


@pytest.mark.parametrize(
    "digest",
    [
        Digest("sha256", "../../../etc/passwd"),
        Digest("sha256", "AB" + "0" * 62),
        Digest("sha256", HEX[:-1]),
        Digest("md5", "0" * 32),
        Digest("../sha256", HEX),
    ],
)
def test_hand_built_bad_digests_never_become_paths(tmp_path: Path, digest: Digest) -> None:
    with pytest.raises(RegistryError) as info:
        StoreLayout(tmp_path).blob_path(digest)
    assert info.value.code is ErrorCode.DIGEST_INVALID


@pytest.mark.parametrize("uuid", ["", "..", "../x", "a/b", "ABC", "-a", "a" * 65, "a\x00b", "a b"])
def test_bad_upload_ids_are_unknown_uploads(tmp_path: Path, uuid: str) -> None:
    assert not is_upload_uuid(uuid)
    with pytest.raises(RegistryError) as info:
        StoreLayout(tmp_path).upload_dir(uuid)
    assert info.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN


def test_temp_paths_are_unique_and_inside_tmp(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    paths = {layout.new_tmp_path() for _ in range(100)}
    assert len(paths) == 100
    assert all(p.parent == layout.tmp_dir and layout.is_tmp_name(p.name) for p in paths)


def test_digest_of_blob_path_round_trips_and_rejects_strays(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    digest = Digest("sha256", HEX)
    assert layout.digest_of_blob_path(layout.blob_path(digest)) == digest
    assert layout.digest_of_blob_path(layout.blobs_dir / "sha256" / "cd" / HEX) is None
    assert layout.digest_of_blob_path(layout.tmp_dir / "x") is None
