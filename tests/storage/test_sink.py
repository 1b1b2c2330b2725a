"""The sink: every chunk hashed and appended in order, without joining them first; big batches
hashed and written by two threads at once, the descriptor busy until both let go."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from p2preg.storage import sink


def chunks_of(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(rng.randint(1, 70_000)) for _ in range(count)] + [b""]


def test_many_chunks_are_hashed_and_written_in_order(tmp_path: Path) -> None:
    chunks = chunks_of(random.Random(3), 40)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    hasher = hashlib.sha256()
    try:
        assert sink.hash_and_write(fd, hasher, chunks) == sum(len(c) for c in chunks)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_partial_vector_writes_are_resumed_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        # A regular file may accept less than asked: here at most 10,001 bytes per call.
        budget, taken = 10_001, []
        for buffer in buffers:
            taken.append(buffer[:budget])
            budget -= len(taken[-1])
            if budget == 0:
                break
        calls.append(len(buffers))
        return real_writev(fd, taken)

    monkeypatch.setattr(os, "writev", short_writev)
    chunks = chunks_of(random.Random(4), 12)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        sink.writev_all(fd, chunks)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert len(calls) > len(chunks)  # it really had to resume


def test_more_chunks_than_one_vector_holds(tmp_path: Path) -> None:
    chunks = [bytes([i % 256]) * 3 for i in range(2500)]  # over IOV_MAX (1024) buffers
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        sink.writev_all(fd, chunks)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)


# -- HashingSink: big batches are hashed and written by two threads at once ----------------------


async def test_big_batches_reach_the_file_in_order_with_the_right_digest(tmp_path: Path) -> None:
    rng = random.Random(5)
    pieces = [rng.randbytes(rng.randint(50_000, 300_000)) for _ in range(30)]
    grown: list[int] = []
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    hasher = hashlib.sha256()
    try:
        out = sink.HashingSink(fd, hasher, flush_bytes=sink.PARALLEL_MIN_BYTES,
                               on_flushed=grown.append)
        for piece in pieces:
            await out.write(piece)
        await out.flush()
    finally:
        os.close(fd)
    data = b"".join(pieces)
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert out.written == len(data) == grown[-1]
    assert len(grown) > 5 and grown == sorted(grown)  # batch by batch, never backwards


async def test_a_failed_write_is_raised_only_once_the_hashing_thread_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_failed, release_hash = threading.Event(), threading.Event()

    def failing_write(fd: int, chunks: list[bytes]) -> int:
        write_failed.set()
        raise OSError(28, "No space left on device")

    def slow_hash(hasher: hashlib._Hash, chunks: list[bytes]) -> None:
        release_hash.wait(timeout=30)

    monkeypatch.setattr(sink, "write_chunks", failing_write)
    monkeypatch.setattr(sink, "hash_chunks", slow_hash)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        out = sink.HashingSink(fd, hashlib.sha256(), flush_bytes=sink.PARALLEL_MIN_BYTES)
        await out.write(b"x" * sink.PARALLEL_MIN_BYTES)  # starts both threads
        drained = asyncio.ensure_future(out.drain())
        await asyncio.to_thread(write_failed.wait, 30)
        for _ in range(20):
            await asyncio.sleep(0)
        # The write is over but the hasher still holds the buffers: the fd must stay open.
        assert not drained.done()
        release_hash.set()
        with pytest.raises(OSError, match="No space"):
            await drained
        await out.settle()
    finally:
        release_hash.set()
        os.close(fd)
    assert out.written == 0  # nothing counted as in the file


async def test_the_next_batch_is_written_while_the_previous_one_is_still_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_hash_held, release = threading.Event(), threading.Event()
    real_hash = sink.hash_chunks
    calls = 0

    def held_first_hash(hasher: hashlib._Hash, chunks: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_hash_held.set()
            release.wait(timeout=30)
        real_hash(hasher, chunks)

    monkeypatch.setattr(sink, "hash_chunks", held_first_hash)
    batch = sink.PARALLEL_MIN_BYTES
    grown: list[int] = []
    written_twice = asyncio.Event()

    def on_flushed(written: int) -> None:
        grown.append(written)
        if written == 2 * batch:
            written_twice.set()

    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    hasher = hashlib.sha256()
    try:
        out = sink.HashingSink(fd, hasher, flush_bytes=batch, on_flushed=on_flushed)
        await out.write(b"a" * batch)
        await asyncio.to_thread(first_hash_held.wait, 30)
        # A second batch goes in flight and reaches the file while the first is still hashed
        # (with one batch in flight, it would wait for that hash: 30 s, then this times out).
        second = asyncio.ensure_future(out.write(b"b" * batch))
        await asyncio.wait_for(written_twice.wait(), timeout=10)
        assert grown == [batch, 2 * batch] and not release.is_set()
        release.set()
        await second
        await out.flush()
    finally:
        release.set()
        os.close(fd)
    data = b"a" * batch + b"b" * batch
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
