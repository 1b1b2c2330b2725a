"""Fixtures for the storage tests: a fresh store under pytest's tmp_path, seeded random bytes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2preg.clock import FakeClock
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore

#: The wall-clock "now" of the maintenance and GC tests (their own modules may start elsewhere).
NOW = 2_000_000_000.0


@pytest.fixture
def layout(tmp_path: Path) -> StoreLayout:
    return StoreLayout(tmp_path / "store")


@pytest.fixture
def blobs(layout: StoreLayout) -> BlobStore:
    store = BlobStore(layout)
    store.recover()
    return store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def meta(blobs: BlobStore, clock: FakeClock) -> Iterator[MetadataStore]:
    """The store's metadata, stamped by ``clock``."""
    with MetadataStore(blobs.layout.db_path, clock=clock) as store:
        yield store


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20261126)


def random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)
