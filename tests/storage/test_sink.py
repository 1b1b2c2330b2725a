"""hash_and_write: every chunk hashed and appended in order, without joining them first."""

from __future__ import annotations

import hashlib
import os
import random
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
