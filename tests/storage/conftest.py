"""Fixtures for the storage tests: a fresh store under pytest's tmp_path, seeded random bytes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout


@pytest.fixture
def layout(tmp_path: Path) -> StoreLayout:
    return StoreLayout(tmp_path / "store")


@pytest.fixture
def blobs(layout: StoreLayout) -> BlobStore:
    store = BlobStore(layout)
    store.recover()
    return store


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20261126)


def random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)
