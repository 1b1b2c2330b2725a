"""``p2preg gc``: an offline garbage collection of a data directory, by hand.

Each test builds a store the way a registry node leaves it (blobs, links, manifests) with the
storage API, then runs the command in-process (``cli.main``) or, for the exit status of the real
program, as a child process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2preg.cli import main
from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.lock import DataDirLock
from p2preg.storage.metadata import MetadataStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def make_store(root: Path) -> dict[str, Digest]:
    """A registry store: ``live`` (a manifest and its layer), ``garbage`` (a deleted image's
    layer, still linked in its repository) and ``orphan`` (linked nowhere), all committed now
    (their ctimes are the real time: only ``--grace-s 0`` collects them).
    """

    async def build() -> dict[str, Digest]:
        layout = StoreLayout(root)
        layout.ensure()
        blobs = BlobStore(layout)
        digests = {
            name: await blobs.put_bytes(name.encode() * 100)
            for name in ("manifest", "live", "garbage", "orphan")
        }
        with MetadataStore(layout.db_path) as meta:
            meta.link_blob("app", digests["live"], 400)
            meta.link_blob("old", digests["garbage"], 700)
            meta.put_manifest("app", digests["manifest"], OCI_MANIFEST, 800, tag="v1",
                              references=[digests["live"]])
        return digests

    return asyncio.run(build())


def present(root: Path, digest: Digest) -> bool:
    return StoreLayout(root).blob_path(digest).exists()


def test_a_dry_run_lists_the_garbage_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digests = make_store(tmp_path)

    assert main(["gc", "--data-dir", str(tmp_path), "--dry-run", "--grace-s", "0"]) == 0

    out = capsys.readouterr().out
    assert f"would delete {digests['garbage']} 700 bytes" in out
    assert f"would delete {digests['orphan']} 600 bytes" in out
    assert str(digests["live"]) not in out and str(digests["manifest"]) not in out
    assert "dry run: would delete 2 of 4 blobs, 1300 bytes (1.3 KiB), and 1 dead link" in out
    assert all(present(tmp_path, d) for d in digests.values())


def test_a_real_run_deletes_the_garbage_and_prints_the_bytes_freed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digests = make_store(tmp_path)

    assert main(["gc", "--data-dir", str(tmp_path), "--grace-s", "0"]) == 0

    out = capsys.readouterr().out
    assert f"deleted {digests['garbage']} 700 bytes" in out
    assert "deleted 2 of 4 blobs, 1300 bytes (1.3 KiB), and 1 dead link" in out
    assert not present(tmp_path, digests["garbage"]) and not present(tmp_path, digests["orphan"])
    assert present(tmp_path, digests["live"]) and present(tmp_path, digests["manifest"])
    with MetadataStore(StoreLayout(tmp_path).db_path) as meta:
        assert meta.repositories() == ["app"]


def test_the_default_grace_period_spares_blobs_committed_within_the_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digests = make_store(tmp_path)

    assert main(["gc", "--data-dir", str(tmp_path)]) == 0

    assert all(present(tmp_path, d) for d in digests.values())
    assert "deleted 0 of 4 blobs, 0 bytes (0 B), and 0 dead links; grace 3600 s" in (
        capsys.readouterr().out
    )


def test_the_data_dir_comes_from_the_environment_like_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(tmp_path)
    monkeypatch.setenv("P2PREG_DATA_DIR", str(tmp_path))
    assert main(["gc", "--dry-run", "--grace-s", "0"]) == 0
    assert "would delete 2 of 4 blobs" in capsys.readouterr().out


def test_a_data_dir_held_by_a_node_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digests = make_store(tmp_path)
    with DataDirLock(StoreLayout(tmp_path)):  # as a running node holds it
        assert main(["gc", "--data-dir", str(tmp_path), "--grace-s", "0"]) == 1
    err = capsys.readouterr().err
    assert f"is in use by pid {os.getpid()}" in err and "stop it to run gc by hand" in err
    assert all(present(tmp_path, d) for d in digests.values())


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["--grace-s", "-5"], 2, "--grace-s must be a number >= 0"),
        (["--grace-s", "inf"], 2, "--grace-s must be a number >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], status: int, needle: str
) -> None:
    make_store(tmp_path)
    assert main(["gc", "--data-dir", str(tmp_path), *argv]) == status
    assert needle in capsys.readouterr().err


def test_a_directory_without_a_store_is_an_error_and_stays_empty(tmp_path: Path) -> None:
    # The real program: exit status and message as an operator sees them.
    proc = subprocess.run(
        [sys.executable, "-m", "p2preg", "gc", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "P2PREG_CONFIG": ""},
    )
    assert proc.returncode == 1
    assert "is not a p2preg data directory" in proc.stderr
    assert list(tmp_path.iterdir()) == []
