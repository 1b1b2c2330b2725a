"""BlobStore and BlobWriter: verified atomic commits, one copy per digest, followable writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage import blobs as blobs_module
from p2preg.storage import sink
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout

from .conftest import random_bytes
from .heldfsync import HeldFsync


def sha256(data: bytes) -> Digest:
    return Digest.of_bytes(data)


def chunked(data: bytes, rng: random.Random, largest: int = 300_000) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, largest)
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


def tmp_files(layout: StoreLayout) -> list[str]:
    return sorted(os.listdir(layout.tmp_dir))


async def test_put_bytes_stores_content_under_its_sha256(blobs: BlobStore) -> None:
    digest = await blobs.put_bytes(b"hello")
    assert digest == sha256(b"hello")
    assert blobs.has(digest)
    assert blobs.size(digest) == 5
    assert blobs.path(digest).read_bytes() == b"hello"
    assert blobs.path(digest) == blobs.layout.blob_path(digest)


async def test_absent_blob_has_no_size_and_no_path(blobs: BlobStore) -> None:
    digest = sha256(b"never stored")
    assert not blobs.has(digest)
    assert blobs.size(digest) is None
    with pytest.raises(RegistryError) as info:
        blobs.path(digest)
    assert info.value.code is ErrorCode.BLOB_UNKNOWN


async def test_multi_batch_write_hashes_every_byte(layout: StoreLayout, rng: random.Random) -> None:
    store = BlobStore(layout, flush_bytes=64 * 1024)
    data = random_bytes(rng, 3 * 1024 * 1024 + 17)
    async with store.writer() as writer:
        for chunk in chunked(data, rng):
            await writer.write(chunk)
        assert writer.received == len(data)
        digest = await writer.commit()
    assert digest == sha256(data)
    assert store.path(digest).read_bytes() == data
    assert writer.done and not writer.failed and writer.size == len(data)
    assert tmp_files(layout) == []


async def test_commit_with_matching_expected_digest(blobs: BlobStore) -> None:
    data = b"layer bytes"
    async with blobs.writer(expected=sha256(data)) as writer:
        await writer.write(data)
        assert await writer.commit() == sha256(data)
    assert blobs.has(sha256(data))


async def test_sha512_digests_are_supported(blobs: BlobStore) -> None:
    data = b"sha512 content"
    expected = Digest("sha512", hashlib.sha512(data).hexdigest())
    assert await blobs.put_bytes(data, expected) == expected
    assert blobs.path(expected).read_bytes() == data


async def test_mismatch_raises_digest_invalid_and_leaves_nothing(blobs: BlobStore) -> None:
    claimed = sha256(b"what the client promised")
    writer = blobs.writer(expected=claimed)
    await writer.write(b"what the client sent")
    with pytest.raises(RegistryError) as info:
        await writer.commit()
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert info.value.detail == {
        "expected": str(claimed),
        "actual": str(sha256(b"what the client sent")),
    }
    assert writer.failed and not writer.done
    assert not blobs.has(claimed) and not blobs.has(sha256(b"what the client sent"))
    assert tmp_files(blobs.layout) == []
    assert blobs.in_progress(claimed) is None
    assert blobs.count() == 0


async def test_commit_argument_is_checked_too(blobs: BlobStore) -> None:
    writer = blobs.writer()
    await writer.write(b"abc")
    with pytest.raises(RegistryError) as info:
        await writer.commit(sha256(b"abd"))
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert tmp_files(blobs.layout) == []


async def test_context_manager_aborts_uncommitted_writer(blobs: BlobStore) -> None:
    with pytest.raises(ZeroDivisionError):
        async with blobs.writer(expected=sha256(b"x")) as writer:
            await writer.write(b"x")
            raise ZeroDivisionError
    assert writer.failed
    assert tmp_files(blobs.layout) == []
    assert blobs.in_progress(sha256(b"x")) is None


async def test_a_closed_writer_refuses_more_bytes(blobs: BlobStore) -> None:
    writer = blobs.writer()
    await writer.commit()
    with pytest.raises(RuntimeError):
        await writer.write(b"late")


async def test_one_copy_per_digest_when_committed_twice(blobs: BlobStore) -> None:
    first = await blobs.put_bytes(b"same")
    inode = blobs.path(first).stat().st_ino
    second = await blobs.put_bytes(b"same")
    assert first == second
    assert blobs.path(first).stat().st_ino == inode
    assert blobs.count() == 1 and blobs.total_bytes() == 4
    assert tmp_files(blobs.layout) == []


async def test_concurrent_writers_of_one_digest_both_succeed_with_one_file(
    layout: StoreLayout, rng: random.Random
) -> None:
    store = BlobStore(layout, flush_bytes=32 * 1024)
    data = random_bytes(rng, 700_000)
    digest = sha256(data)

    async def push(seed: int) -> Digest:
        async with store.writer(expected=digest) as writer:
            for chunk in chunked(data, random.Random(seed), largest=50_000):
                await writer.write(chunk)
                await asyncio.sleep(0)  # interleave the writers
            return await writer.commit()

    results = await asyncio.gather(*(push(seed) for seed in range(4)))
    assert results == [digest] * 4
    assert store.count() == 1 and store.total_bytes() == len(data)
    assert store.path(digest).read_bytes() == data
    assert tmp_files(layout) == []
    assert store.in_progress(digest) is None


async def test_in_progress_finds_the_registered_writer_until_commit(blobs: BlobStore) -> None:
    digest = sha256(b"growing")
    assert blobs.in_progress(digest) is None
    writer = blobs.writer(expected=digest)
    assert blobs.in_progress(digest) is writer
    assert blobs.writer().expected is None  # anonymous writers are never registered
    await writer.write(b"growing")
    await writer.commit()
    assert blobs.in_progress(digest) is None


async def test_in_progress_falls_back_to_the_next_writer_when_one_aborts(blobs: BlobStore) -> None:
    digest = sha256(b"x")
    first, second = blobs.writer(expected=digest), blobs.writer(expected=digest)
    assert blobs.in_progress(digest) is first
    await first.abort()
    assert blobs.in_progress(digest) is second
    await second.abort()
    assert blobs.in_progress(digest) is None


async def test_reader_follows_a_growing_blob_to_the_end(
    layout: StoreLayout, rng: random.Random
) -> None:
    store = BlobStore(layout, flush_bytes=16 * 1024)
    data = random_bytes(rng, 500_000)
    digest = sha256(data)
    writer = store.writer(expected=digest)
    progress: list[int] = []

    async def follow() -> bytes:
        followed = store.in_progress(digest)
        assert followed is writer
        received = bytearray()
        with followed.open_reader() as f:
            while True:
                size = await followed.wait_for(len(received))
                received += f.read(size - len(received))
                progress.append(len(received))
                if followed.done or followed.failed:
                    break
        assert followed.done
        return bytes(received)

    reader = asyncio.create_task(follow())
    await asyncio.sleep(0)
    for chunk in chunked(data, rng, largest=40_000):
        await writer.write(chunk)
    await writer.commit()
    assert await reader == data
    assert len(progress) > 3, "the reader saw the blob grow, not only the final state"


async def test_flush_makes_buffered_bytes_visible_to_readers(blobs: BlobStore) -> None:
    writer = blobs.writer(expected=sha256(b"abcdef"))
    await writer.write(b"abc")
    assert writer.size == 0 and writer.received == 3
    await writer.flush()
    assert writer.size == 3
    assert await writer.wait_for(2) == 3
    with writer.open_reader() as f:
        assert f.read() == b"abc"
    await writer.abort()


async def test_waiting_readers_wake_when_the_writer_fails(blobs: BlobStore) -> None:
    writer = blobs.writer(expected=sha256(b"abc"))
    waiter = asyncio.create_task(writer.wait_for(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    await writer.abort()
    assert await waiter == 0
    assert writer.failed
    with pytest.raises(RegistryError) as info:
        writer.open_reader()
    assert info.value.code is ErrorCode.BLOB_UNKNOWN


async def test_open_reader_after_commit_reads_the_committed_blob(blobs: BlobStore) -> None:
    writer = blobs.writer(expected=sha256(b"done"))
    await writer.write(b"done")
    await writer.commit()
    assert writer.final_path == blobs.path(sha256(b"done"))
    with writer.open_reader() as f:
        assert f.read() == b"done"


async def test_cancelled_committer_still_leaves_a_committed_blob(blobs: BlobStore) -> None:
    data = b"x" * 200_000
    writer = blobs.writer(expected=sha256(data))
    await writer.write(data)
    task = asyncio.create_task(writer.commit())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.abort()  # waits for the commit instead of racing it
    assert writer.done and not writer.failed
    assert blobs.path(sha256(data)).read_bytes() == data


async def test_commit_file_moves_a_matching_file_into_place(
    blobs: BlobStore, tmp_path: Path
) -> None:
    src = blobs.layout.root / "upload-data"
    src.write_bytes(b"uploaded")
    await blobs.commit_file(src, sha256(b"uploaded"))
    assert not src.exists()
    assert blobs.path(sha256(b"uploaded")).read_bytes() == b"uploaded"
    assert blobs.count() == 1


async def test_commit_file_keeps_the_source_on_mismatch(blobs: BlobStore) -> None:
    src = blobs.layout.root / "upload-data"
    src.write_bytes(b"uploaded")
    with pytest.raises(RegistryError) as info:
        await blobs.commit_file(src, sha256(b"other"))
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert src.read_bytes() == b"uploaded"
    assert not blobs.has(sha256(b"other"))


async def test_commit_file_rehashes_when_the_callers_digest_is_wrong(blobs: BlobStore) -> None:
    src = blobs.layout.root / "upload-data"
    src.write_bytes(b"uploaded")
    with pytest.raises(RegistryError):
        await blobs.commit_file(src, sha256(b"other"), actual=sha256(b"uploaded"))
    assert src.exists()


async def test_delete_count_total_and_digests(blobs: BlobStore) -> None:
    a = await blobs.put_bytes(b"a" * 10)
    b = await blobs.put_bytes(b"b" * 20)
    assert blobs.count() == 2 and blobs.total_bytes() == 30
    assert sorted(map(str, blobs.digests())) == sorted([str(a), str(b)])
    assert blobs.delete(a)
    assert not blobs.delete(a)
    assert not blobs.has(a)
    assert blobs.count() == 1 and blobs.total_bytes() == 20
    assert list(blobs.digests()) == [b]


async def test_counters_survive_a_restart(layout: StoreLayout) -> None:
    first = BlobStore(layout)
    await first.put_bytes(b"one")
    await first.put_bytes(b"three")
    second = BlobStore(layout)
    assert second.count() == 2 and second.total_bytes() == 8


async def test_recover_removes_leftover_temp_files_only(blobs: BlobStore) -> None:
    kept = await blobs.put_bytes(b"committed")
    (blobs.layout.tmp_dir / "0123.part").write_bytes(b"half a layer")
    (blobs.layout.tmp_dir / "junk").write_bytes(b"")
    restarted = BlobStore(blobs.layout)
    assert restarted.recover() == 2
    assert tmp_files(blobs.layout) == []
    assert restarted.has(kept) and restarted.count() == 1


async def test_recover_refuses_to_run_under_active_writers(blobs: BlobStore) -> None:
    writer = blobs.writer(expected=sha256(b"x"))
    with pytest.raises(RuntimeError):
        blobs.recover()
    await writer.abort()


async def test_check_detects_corruption_on_disk_and_takes_the_blob_out(blobs: BlobStore) -> None:
    digest = await blobs.put_bytes(b"pristine")
    assert await blobs.check(digest, found_by="scrub") == "ok"
    path = blobs.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"bitrot!!")
    assert await blobs.check(digest, found_by="scrub") == "corrupt"
    assert not blobs.has(digest) and blobs.corrupt_total["scrub"] == 1
    assert await blobs.check(sha256(b"absent"), found_by="scrub") == "absent"


async def test_abort_from_another_task_stops_a_writer_mid_flush(
    layout: StoreLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_hash_and_write = sink.hash_and_write

    def held_hash_and_write(fd: int, hasher: Any, chunks: list[bytes]) -> int:
        release.wait(timeout=30)  # the batch stays in flight until the test lets it go
        return real_hash_and_write(fd, hasher, chunks)

    monkeypatch.setattr(sink, "hash_and_write", held_hash_and_write)
    store = BlobStore(layout, flush_bytes=1024)
    writer = store.writer(expected=sha256(b"never"))
    await writer.write(b"a" * 1024)  # a batch is now in flight (held)
    await writer.write(b"b" * 1024)  # the second batch in flight, chained after the first
    pending = asyncio.create_task(writer.write(b"c" * 1024))  # waits for the first batch
    await asyncio.sleep(0)
    abort = asyncio.create_task(writer.abort())
    await asyncio.sleep(0)
    release.set()
    await abort
    with pytest.raises(RuntimeError):
        await pending
    assert writer.failed and tmp_files(layout) == []


async def test_received_counts_each_byte_once_after_a_flush_completes(blobs: BlobStore) -> None:
    writer = blobs.writer()
    try:
        await writer.write(b"x" * 1024)
        await writer.flush()
        await asyncio.sleep(0)  # let the flush's done-callback run
        assert writer.received == 1024
        assert writer.size == 1024
        await writer.write(b"y" * 10)
        assert writer.received == 1034
    finally:
        await writer.abort()


@pytest.fixture
def held_fsync(monkeypatch: pytest.MonkeyPatch) -> Any:
    held = HeldFsync().install(monkeypatch)
    yield held
    held.release()


async def test_verified_is_set_before_the_fsync_and_done_after_it(
    blobs: BlobStore, held_fsync: HeldFsync, rng: random.Random
) -> None:
    data = random_bytes(rng, 300_000)
    writer = blobs.writer(expected=sha256(data))
    await writer.write(data)
    commit = asyncio.create_task(writer.commit())
    # Readers waiting for the final size wake on ``verified``, while the fsync is still held.
    assert await writer.wait_for_final(len(data)) == len(data)
    assert writer.verified and not writer.done
    assert not blobs.has(sha256(data))
    with writer.open_reader() as f:
        assert f.read() == data
    await held_fsync.wait_entered()
    held_fsync.release()
    assert await commit == sha256(data)
    assert writer.done and blobs.has(sha256(data))


async def test_plain_wait_for_still_waits_for_the_commit(
    blobs: BlobStore, held_fsync: HeldFsync
) -> None:
    writer = blobs.writer(expected=sha256(b"abc"))
    await writer.write(b"abc")
    commit = asyncio.create_task(writer.commit())
    waiter = asyncio.create_task(writer.wait_for(3))
    await held_fsync.wait_entered()
    assert writer.verified
    await asyncio.sleep(0)
    assert not waiter.done()
    held_fsync.release()
    assert await waiter == 3
    await commit


async def test_wrong_bytes_are_never_verified(blobs: BlobStore) -> None:
    writer = blobs.writer(expected=sha256(b"right"))
    await writer.write(b"wrong")
    with pytest.raises(RegistryError):
        await writer.commit()
    assert writer.failed and not writer.verified
    assert await writer.wait_for_final(0) == 0  # a waiting reader wakes and sees the failure


async def test_a_failed_fsync_after_verification_commits_nothing(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs_module, "_fsync_file", broken_fsync)
    writer = blobs.writer(expected=sha256(b"data"))
    await writer.write(b"data")
    with pytest.raises(RegistryError) as info:
        await writer.commit()
    assert info.value.code is ErrorCode.UNKNOWN
    assert writer.verified and writer.failed and not writer.done
    assert not blobs.has(sha256(b"data"))
    assert tmp_files(blobs.layout) == []
