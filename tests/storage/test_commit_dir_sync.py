"""A blob's commit whose last step, the fsync of its directory after the link (or the removal of
its temp name), fails: the blob is committed, so the commit reports success, counts the failure
and logs it. What a client is told must match what it then sees: the name is visible at once and
holds verified, fsync'ed bytes (before this rule the writer failed with 500 while the blob was
served). A failure before the link still commits nothing (``test_blobs.py``)."""

from __future__ import annotations

import errno
import logging
import os
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from p2preg.oci.digest import Digest
from p2preg.storage import blobs as blobs_module
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from tests.registry.conftest import start_registry
from tests.registry.helpers import digest_of


class FailingDirSync:
    """Replaces the commit's directory fsync with one that fails, and counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Path] = []
        monkeypatch.setattr(blobs_module, "_fsync_blob_dir", self)

    def __call__(self, path: Path) -> None:
        self.calls.append(path)
        raise OSError(errno.EIO, "Input/output error")


def assert_committed(store: BlobStore, data: bytes) -> None:
    digest = Digest.of_bytes(data)
    assert store.has(digest)
    assert store.layout.blob_path(digest).read_bytes() == data
    assert os.listdir(store.layout.tmp_dir) == []


async def test_a_writer_whose_directory_fsync_fails_reports_the_commit_it_made(
    blobs: BlobStore, rng: random.Random, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = rng.randbytes(300_000)
    failing = FailingDirSync(monkeypatch)
    writer = blobs.writer(expected=Digest.of_bytes(data))
    await writer.write(data)
    with caplog.at_level(logging.ERROR, logger="p2preg.storage.blobs"):
        assert await writer.commit() == Digest.of_bytes(data)
    assert failing.calls == [blobs.layout.blob_path(Digest.of_bytes(data)).parent]
    assert writer.done and writer.verified and not writer.failed
    assert_committed(blobs, data)
    assert blobs.count() == 1 and blobs.total_bytes() == len(data)
    assert blobs.dir_sync_failed_total == 1
    assert [r.fields["step"] for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "fields", {}).get("event") == "blob_dir_sync_failed"] == ["fsync_dir"]
    with writer.open_reader() as reader:  # a follower reads the committed file
        assert reader.read() == data


async def test_a_commit_whose_temp_name_cannot_be_removed_still_reports_it(
    blobs: BlobStore, rng: random.Random, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = rng.randbytes(5000)
    real_unlink = os.unlink

    def busy_unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path).parent == blobs.layout.tmp_dir:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(blobs_module.os, "unlink", busy_unlink)
    assert await blobs.put_bytes(data) == Digest.of_bytes(data)
    monkeypatch.undo()
    assert blobs.has(Digest.of_bytes(data)) and blobs.dir_sync_failed_total == 1
    assert len(os.listdir(blobs.layout.tmp_dir)) == 1  # left behind: the next start deletes it
    assert blobs.recover() == 1
    assert_committed(blobs, data)


async def test_an_upload_whose_directory_fsync_fails_is_committed_and_counted(
    blobs: BlobStore, rng: random.Random, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = rng.randbytes(70_000)
    src = blobs.layout.uploads_dir / "data"
    src.write_bytes(data)
    FailingDirSync(monkeypatch)
    await blobs.commit_file(src, Digest.of_bytes(data))
    assert not src.exists()
    assert_committed(blobs, data)
    assert blobs.count() == 1 and blobs.dir_sync_failed_total == 1
    registry = CollectorRegistry()
    blobs.register_metrics(registry)
    assert b"p2preg_store_dir_sync_failed_total 1.0" in generate_latest(registry)


async def test_a_push_whose_directory_fsync_fails_is_created_and_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(20261207)
    monolithic, chunked = rng.randbytes(200_000), rng.randbytes(150_000)
    node = await start_registry(tmp_path / "store")
    try:
        failing = FailingDirSync(monkeypatch)
        reply = await node.request(
            "POST", f"/v2/lib/app/blobs/uploads/?digest={digest_of(monolithic)}",
            data=monolithic)
        assert reply.status == 201, reply.body

        started = await node.request("POST", "/v2/lib/app/blobs/uploads/",
                                     headers={"Content-Length": "0"})
        assert started.status == 202
        patched = await node.request(
            "PATCH", started.headers["Location"], data=chunked,
            headers={"Content-Type": "application/octet-stream"})
        assert patched.status == 202
        location = patched.headers["Location"]
        sep = "&" if "?" in location else "?"
        put = await node.request("PUT", f"{location}{sep}digest={digest_of(chunked)}")
        assert put.status == 201, put.body
        assert len(failing.calls) == 2

        for data in (monolithic, chunked):
            got = await node.request("GET", f"/v2/lib/app/blobs/{digest_of(data)}")
            assert got.status == 200 and got.body == data
        assert os.listdir(StoreLayout(tmp_path / "store").tmp_dir) == []
    finally:
        await node.stop()
