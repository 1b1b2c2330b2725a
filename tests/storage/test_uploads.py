"""UploadManager: ordered chunks, 416 on a wrong offset, atomic appends, finish, recovery."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from p2preg.clock import FakeClock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager, UploadRecovery

from .conftest import random_bytes

REPO = "library/app"


class Stack:
    """One store's layout, blobs, metadata and uploads, reopenable like a restarted node."""

    def __init__(self, root: Path, clock: FakeClock) -> None:
        self.layout = StoreLayout(root)
        self.blobs = BlobStore(self.layout, flush_bytes=64 * 1024)
        self.meta = MetadataStore(self.layout.db_path, clock=clock)
        self.uploads = UploadManager(
            self.layout, self.blobs, self.meta, clock, flush_bytes=64 * 1024
        )

    def close(self) -> None:
        self.meta.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def stack(tmp_path: Path, clock: FakeClock) -> Iterator[Stack]:
    s = Stack(tmp_path / "store", clock)
    yield s
    s.close()


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Recorder:
    """An async iterator that notes whether anyone read from it."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = list(parts)
        self.read = False

    def __aiter__(self) -> Recorder:
        return self

    async def __anext__(self) -> bytes:
        self.read = True
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)


def sha256(data: bytes) -> Digest:
    return Digest.of_bytes(data)


async def test_create_starts_an_empty_session(stack: Stack) -> None:
    record = stack.uploads.create(REPO)
    assert record.offset == 0 and record.repo == REPO
    assert stack.uploads.get(REPO, record.uuid) == record
    assert stack.layout.upload_data_path(record.uuid).read_bytes() == b""


@pytest.mark.parametrize("uuid", ["../../etc", "nope", "ABC", ""])
async def test_unknown_or_malformed_ids_are_blob_upload_unknown(stack: Stack, uuid: str) -> None:
    with pytest.raises(RegistryError) as info:
        stack.uploads.get(REPO, uuid)
    assert info.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN


async def test_a_session_belongs_to_its_repository(stack: Stack) -> None:
    record = stack.uploads.create(REPO)
    with pytest.raises(RegistryError) as info:
        stack.uploads.get("other/repo", record.uuid)
    assert info.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN
    with pytest.raises(RegistryError):
        await stack.uploads.append("other/repo", record.uuid, stream(b"x"), 0)


async def test_chunks_in_order_then_finish_commits_and_links(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    assert await stack.uploads.append(REPO, uuid, stream(b"hello "), start=0) == 6
    assert await stack.uploads.append(REPO, uuid, stream(b"wor", b"ld"), start=6) == 11
    assert stack.uploads.get(REPO, uuid).offset == 11
    assert await stack.uploads.finish(REPO, uuid, sha256(b"hello world")) == 11
    assert stack.blobs.path(sha256(b"hello world")).read_bytes() == b"hello world"
    assert stack.meta.blob_linked(REPO, sha256(b"hello world"))
    assert stack.meta.get_upload(uuid) is None
    assert not stack.layout.upload_dir(uuid).exists()


async def test_a_chunk_at_the_wrong_offset_is_416_with_range(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"12345"), start=0)
    chunk = Recorder([b"67890"])
    with pytest.raises(RegistryError) as info:
        await stack.uploads.append(REPO, uuid, chunk, start=3)
    error = info.value
    assert (error.code, error.status) == (ErrorCode.BLOB_UPLOAD_INVALID, 416)
    assert error.headers == {"Range": "0-4"}
    assert not chunk.read, "the body is not consumed when the offset is wrong"
    assert stack.uploads.get(REPO, uuid).offset == 5


async def test_an_empty_session_reports_range_0_0(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    with pytest.raises(RegistryError) as info:
        await stack.uploads.append(REPO, uuid, stream(b"x"), start=1)
    assert info.value.headers == {"Range": "0-0"}


async def test_a_failed_chunk_leaves_the_upload_at_its_old_offset(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"kept"), start=0)

    async def dies_midway() -> AsyncIterator[bytes]:
        yield b"x" * 200_000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await stack.uploads.append(REPO, uuid, dies_midway(), start=4)
    assert stack.uploads.get(REPO, uuid).offset == 4
    assert stack.layout.upload_data_path(uuid).read_bytes() == b"kept"
    assert await stack.uploads.append(REPO, uuid, stream(b"!"), start=4) == 5
    assert await stack.uploads.finish(REPO, uuid, sha256(b"kept!")) == 5


async def test_a_cancelled_append_rolls_back_too(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    gate = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"y" * 100_000
        gate.set()
        await asyncio.Event().wait()
        yield b""

    task = asyncio.create_task(stack.uploads.append(REPO, uuid, stalls(), start=0))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stack.uploads.get(REPO, uuid).offset == 0
    assert stack.layout.upload_data_path(uuid).stat().st_size == 0


async def test_large_upload_in_many_chunks_hashes_correctly(
    stack: Stack, rng: random.Random
) -> None:
    data = random_bytes(rng, 2 * 1024 * 1024 + 333)
    uuid = stack.uploads.create(REPO).uuid
    offset = 0
    for part in (data[:700_000], data[700_000:1_900_000], data[1_900_000:]):
        offset = await stack.uploads.append(REPO, uuid, pieces(part, 65_536), start=offset)
    assert offset == len(data)
    assert await stack.uploads.finish(REPO, uuid, sha256(data)) == len(data)
    assert stack.blobs.path(sha256(data)).read_bytes() == data


async def test_finish_with_a_wrong_digest_keeps_the_session(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"content"))
    with pytest.raises(RegistryError) as info:
        await stack.uploads.finish(REPO, uuid, sha256(b"something else"))
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert not stack.blobs.has(sha256(b"something else"))
    assert stack.uploads.get(REPO, uuid).offset == 7
    await stack.uploads.finish(REPO, uuid, sha256(b"content"))


async def test_finish_accepts_sha512(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"content"))
    digest = Digest("sha512", hashlib.sha512(b"content").hexdigest())
    assert await stack.uploads.finish(REPO, uuid, digest) == 7
    assert stack.blobs.has(digest)


async def test_finishing_a_blob_that_exists_keeps_one_copy(stack: Stack) -> None:
    await stack.blobs.put_bytes(b"dup")
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"dup"))
    await stack.uploads.finish(REPO, uuid, sha256(b"dup"))
    assert stack.blobs.count() == 1
    assert stack.meta.blob_linked(REPO, sha256(b"dup"))


async def test_concurrent_appends_run_one_after_the_other(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    results = await asyncio.gather(
        stack.uploads.append(REPO, uuid, pieces(b"a" * 300_000, 10_000)),
        stack.uploads.append(REPO, uuid, pieces(b"b" * 300_000, 10_000)),
    )
    assert sorted(results) == [300_000, 600_000]
    data = stack.layout.upload_data_path(uuid).read_bytes()
    assert data in (b"a" * 300_000 + b"b" * 300_000, b"b" * 300_000 + b"a" * 300_000)


async def test_two_chunks_claiming_one_offset_one_gets_416(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    outcomes = await asyncio.gather(
        stack.uploads.append(REPO, uuid, stream(b"first"), start=0),
        stack.uploads.append(REPO, uuid, stream(b"second"), start=0),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, RegistryError)]
    assert len(errors) == 1 and errors[0].status == 416


async def test_cancel_removes_the_session_and_its_data(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    await stack.uploads.append(REPO, uuid, stream(b"abc"))
    stack.uploads.cancel(REPO, uuid)
    assert not stack.layout.upload_dir(uuid).exists()
    with pytest.raises(RegistryError) as info:
        stack.uploads.cancel(REPO, uuid)
    assert info.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN


async def test_expire_drops_only_old_sessions(stack: Stack, clock: FakeClock) -> None:
    old = stack.uploads.create(REPO).uuid
    clock.advance(3600)
    fresh = stack.uploads.create(REPO).uuid
    clock.advance(1)
    assert stack.uploads.expire(max_age_s=1800) == 1
    assert stack.meta.get_upload(old) is None and not stack.layout.upload_dir(old).exists()
    assert stack.uploads.get(REPO, fresh).offset == 0


async def test_recover_makes_sessions_and_files_agree(tmp_path: Path, clock: FakeClock) -> None:
    first = Stack(tmp_path / "s", clock)
    longer = first.uploads.create(REPO).uuid  # crash after the write, before the offset update
    await first.uploads.append(REPO, longer, stream(b"durable"))
    with open(first.layout.upload_data_path(longer), "ab") as f:
        f.write(b" + unrecorded tail")
    missing = first.uploads.create(REPO).uuid  # a row whose file is gone
    first.layout.upload_data_path(missing).unlink()
    shorter = first.uploads.create(REPO).uuid  # a file shorter than its recorded offset
    await first.uploads.append(REPO, shorter, stream(b"0123456789"))
    with open(first.layout.upload_data_path(shorter), "r+b") as f:
        f.truncate(4)
    orphan = first.layout.uploads_dir / "0abc"  # a directory without a row
    orphan.mkdir()
    (orphan / "data").write_bytes(b"junk")
    first.close()

    restarted = Stack(tmp_path / "s", clock)
    assert restarted.uploads.recover() == UploadRecovery(
        kept=1, truncated=1, dropped=2, orphans_removed=1
    )
    assert restarted.layout.upload_data_path(longer).read_bytes() == b"durable"
    assert restarted.meta.get_upload(missing) is None
    assert restarted.meta.get_upload(shorter) is None
    assert not restarted.layout.upload_dir(shorter).exists()
    assert not orphan.exists()
    # The surviving session resumes at its offset, without the running hash of the old process.
    assert await restarted.uploads.append(REPO, longer, stream(b"!"), start=7) == 8
    assert await restarted.uploads.finish(REPO, longer, sha256(b"durable!")) == 8
    restarted.close()


async def test_an_empty_blob_can_be_uploaded(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    assert await stack.uploads.append(REPO, uuid, stream(), start=0) == 0
    assert await stack.uploads.finish(REPO, uuid, sha256(b"")) == 0
    assert stack.blobs.size(sha256(b"")) == 0


async def test_a_session_whose_data_vanished_is_unknown(stack: Stack) -> None:
    uuid = stack.uploads.create(REPO).uuid
    stack.layout.upload_data_path(uuid).unlink()
    with pytest.raises(RegistryError) as info:
        await stack.uploads.append(REPO, uuid, stream(b"x"))
    assert info.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN
    assert stack.meta.get_upload(uuid) is None


async def test_sessions_recovered_after_a_restart_count_towards_the_node_cap(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = Stack(tmp_path / "store", clock)
    for _ in range(2):
        first.uploads.create("lib/app", owner="addr:10.0.0.1")
    first.close()
    again = Stack(tmp_path / "store", clock)
    try:
        again.uploads.recover()
        again.uploads.max_sessions = 3
        assert again.uploads.open_sessions == 2
        again.uploads.create("lib/app", owner="addr:10.0.0.2")
        with pytest.raises(RegistryError) as refused:
            again.uploads.create("lib/app", owner="addr:10.0.0.3")
        assert refused.value.code is ErrorCode.TOOMANYREQUESTS
        assert refused.value.status == 429
        assert refused.value.headers["Retry-After"] == "60"
        assert len(again.meta.uploads()) == 3  # the refused one wrote nothing
        assert len(list(again.layout.uploads_dir.iterdir())) == 3
    finally:
        again.close()
