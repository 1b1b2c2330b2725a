"""Single-flight blob fills: one fetch per digest, followers from byte 0, resume, wrong bytes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import pytest

from p2preg.clock import FakeClock
from p2preg.fetch.reader import EARLY_RELEASE_MIN_BYTES, FollowAborted, FollowedSpan, follow
from p2preg.fetch.singleflight import (
    FILL_FLUSH_BYTES,
    FLUSH_INTERVAL_S,
    BlobFetcher,
    Fill,
    FillError,
)
from p2preg.fetch.sources import BlobSource, SourceStream, UpstreamBlobSource
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.upstream.client import UpstreamClient
from p2preg.upstream.config import UpstreamConfig
from tests.storage.heldfsync import HeldFsync
from tests.upstream.fakes import FakeUpstream, StepClock

MiB = 1 << 20


class GatedStream:
    """Yields ``data`` in chunks; after each chunk in ``pause_after`` waits for ``gate``."""

    def __init__(self, source: GatedSource, offset: int) -> None:
        self.source = source
        self.offset = offset
        self.size: int | None = source.declared_size

    async def chunks(self) -> AsyncIterator[bytes]:
        data = self.source.data
        pos = self.offset
        while pos < len(data):
            if self.source.die_at is not None and pos >= self.source.die_at:
                raise OSError("peer went away")
            end = min(len(data), pos + self.source.chunk)
            if self.source.die_at is not None:
                end = min(end, max(self.source.die_at, pos + 1))
            yield data[pos:end]
            pos = end
            if pos in self.source.pause_at:
                self.source.paused.set()
                await self.source.gate.wait()

    async def __aenter__(self) -> GatedStream:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class GatedSource:
    """An in-memory ``BlobSource`` (a stand-in for a peer) whose pace the test controls."""

    kind = "peer"

    def __init__(self, data: bytes, *, name: str = "peer", chunk: int = 64 * 1024,
                 pause_at: tuple[int, ...] = (), die_at: int | None = None,
                 declared_size: int | None = -1) -> None:
        self.name = name
        self.data = data
        self.chunk = chunk
        self.pause_at = set(pause_at)
        self.die_at = die_at
        self.declared_size = len(data) if declared_size == -1 else declared_size
        self.gate = asyncio.Event()
        self.paused = asyncio.Event()
        self.opened_at: list[int] = []

    async def open(self, digest: Digest, offset: int) -> SourceStream:
        self.opened_at.append(offset)
        return GatedStream(self, offset)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(StoreLayout(tmp_path / "store"))
    store.recover()
    return store


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(UpstreamConfig("docker.io", upstream.url), clock=StepClock(),
                       rng=random.Random(0))
    yield c
    await c.close()


def payload(size: int, seed: int = 1) -> tuple[bytes, Digest]:
    data = random.Random(seed).randbytes(size)
    return data, Digest("sha256", hashlib.sha256(data).hexdigest())


async def read_all(fill: Fill, start: int = 0, end: int | None = None) -> bytes:
    await fill.ready()
    return b"".join([c async for c in follow(fill, start, end)])


def tmp_files(blobs: BlobStore) -> list[str]:
    return os.listdir(blobs.layout.tmp_dir)


async def test_twenty_concurrent_readers_share_one_upstream_fetch(
    blobs: BlobStore, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    data = random.Random(2).randbytes(8 * MiB)
    digest = parse_digest(upstream.add_blob(data))
    fetcher = BlobFetcher(blobs)
    source = UpstreamBlobSource(client, "library/big")

    fills: list[Fill] = []

    async def one_client() -> bytes:
        fills.append(fetcher.fill(digest, [source]))
        return await read_all(fills[-1])

    bodies = await asyncio.gather(*(one_client() for _ in range(20)))
    assert all(body == data for body in bodies)
    assert upstream.blob_gets(str(digest)) == 1
    assert fetcher.started_total == 1
    assert await fills[0].wait() == digest  # bodies end once verified; the commit follows
    assert blobs.has(digest)
    assert tmp_files(blobs) == []


async def test_a_late_reader_gets_the_blob_from_byte_zero_while_it_grows(
    blobs: BlobStore,
) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(256 * 1024,))
    fetcher = BlobFetcher(blobs)
    fill = fetcher.fill(digest, [source])
    early = asyncio.create_task(read_all(fill))
    await source.paused.wait()
    late_fill = fetcher.fill(digest, [source])
    assert late_fill is fill  # joined, not a second fetch
    late = asyncio.create_task(read_all(late_fill))
    source.gate.set()
    assert await early == data
    assert await late == data
    assert source.opened_at == [0]


async def test_a_reader_that_goes_away_does_not_abort_the_fill(blobs: BlobStore) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(128 * 1024,))
    fetcher = BlobFetcher(blobs)
    fill = fetcher.fill(digest, [source])
    reader = asyncio.create_task(read_all(fill))
    await source.paused.wait()
    reader.cancel()  # the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await reader
    source.gate.set()
    assert await fill.wait() == digest
    assert blobs.has(digest)


async def test_range_of_a_blob_still_arriving_is_served_from_the_growing_file(
    blobs: BlobStore,
) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(512 * 1024,))
    fill = BlobFetcher(blobs).fill(digest, [source])
    await source.paused.wait()
    head = asyncio.create_task(read_all(fill, 1000, 2000))
    # The span is on disk, but its last byte waits for the digest check at commit.
    await asyncio.sleep(0)
    assert not head.done()
    source.gate.set()
    assert await head == data[1000:2000]


async def test_a_source_that_dies_is_resumed_by_the_next_at_the_same_offset(
    blobs: BlobStore, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    data, _ = payload(3 * MiB)
    digest = parse_digest(upstream.add_blob(data))
    dying_peer = GatedSource(data, die_at=1 * MiB + 123)
    fill = BlobFetcher(blobs).fill(digest, [dying_peer, UpstreamBlobSource(client, "a")])
    assert await read_all(fill) == data
    await fill.wait()  # readers get the last byte once verified, before the commit is durable
    assert blobs.has(digest)
    ranges = [r.headers.get("Range") for r in upstream.requests if r.method == "GET"]
    assert ranges == [f"bytes={1 * MiB + 123}-"]


async def test_wrong_bytes_commit_nothing_abort_readers_and_are_counted(
    blobs: BlobStore, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    data, _ = payload(2 * MiB)
    digest = parse_digest(upstream.add_blob(data))
    upstream.blob_body = lambda d, body: body[:-1] + bytes([body[-1] ^ 1])  # same length
    outcomes: list[tuple[str, str]] = []
    fetcher = BlobFetcher(blobs, observer=lambda kind, outcome: outcomes.append((kind, outcome)))
    fill = fetcher.fill(digest, [UpstreamBlobSource(client, "a")])
    await fill.ready()
    received = bytearray()
    with pytest.raises(FollowAborted):
        async for chunk in follow(fill):
            received += chunk
    assert len(received) < len(data)  # never a complete body
    with pytest.raises(FillError) as info:
        await fill.wait()
    assert info.value.wrong_bytes
    assert info.value.to_registry_error().code is ErrorCode.UPSTREAM_ERROR
    assert not blobs.has(digest)
    assert tmp_files(blobs) == []
    assert fetcher.wrong_bytes_total == 1
    assert outcomes == [("upstream", "wrong_bytes")]


async def test_a_source_sending_more_than_it_announced_is_wrong_bytes(blobs: BlobStore) -> None:
    data, digest = payload(300_000)
    liar = GatedSource(data + b"extra", declared_size=len(data))
    fetcher = BlobFetcher(blobs)
    fill = fetcher.fill(digest, [liar])
    with pytest.raises(FillError, match="more than the 300000 bytes"):
        await fill.wait()
    assert fetcher.wrong_bytes_total == 1
    assert not blobs.has(digest)


async def test_a_late_reader_of_a_failed_fill_gets_the_error(blobs: BlobStore) -> None:
    _, digest = payload(10_000)
    fill = BlobFetcher(blobs).fill(digest, [GatedSource(b"x" * 10_000)])
    with pytest.raises(FillError):
        await fill.wait()
    with pytest.raises(FillError):
        await fill.ready()


async def test_when_every_source_fails_the_error_names_each(
    blobs: BlobStore, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    data, digest = payload(10_000)
    fill = BlobFetcher(blobs).fill(digest, [GatedSource(data, die_at=0, name="peer-a"),
                                            UpstreamBlobSource(client, "a")])
    with pytest.raises(FillError) as info:
        await fill.wait()
    assert "peer-a: broke off at byte 0" in info.value.reason
    assert "upstream docker.io" in info.value.reason


async def test_a_blob_the_upstream_does_not_have_is_blob_unknown(
    blobs: BlobStore, client: UpstreamClient
) -> None:
    _, digest = payload(10)
    fill = BlobFetcher(blobs).fill(digest, [UpstreamBlobSource(client, "a")])
    with pytest.raises(FillError) as info:
        await fill.ready()
    assert info.value.to_registry_error().code is ErrorCode.BLOB_UNKNOWN


async def test_a_new_fill_starts_after_a_failed_one(blobs: BlobStore) -> None:
    data, digest = payload(10_000)
    fetcher = BlobFetcher(blobs)
    with pytest.raises(FillError):
        await fetcher.fill(digest, [GatedSource(data, die_at=5)]).wait()
    assert await fetcher.fill(digest, [GatedSource(data)]).wait() == digest
    assert fetcher.started_total == 2


async def test_close_cancels_fills_and_commits_nothing(blobs: BlobStore) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(64 * 1024,))
    fetcher = BlobFetcher(blobs)
    fetcher.fill(digest, [source])
    await source.paused.wait()
    await fetcher.close()
    assert not blobs.has(digest)
    assert tmp_files(blobs) == []


def test_gated_source_satisfies_the_protocol() -> None:
    source: BlobSource = GatedSource(b"")
    assert source.kind == "peer"


async def test_a_reader_that_verifies_itself_gets_a_range_before_the_commit(
    blobs: BlobStore,
) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(512 * 1024,))
    fill = BlobFetcher(blobs).fill(digest, [source])
    await source.paused.wait()
    await fill.writer.wait_for(2000)  # the first chunk is flushed at once
    part = b"".join([c async for c in follow(fill, 1000, 2000, hold_last_byte=False)])
    assert part == data[1000:2000]
    assert not fill.finished
    source.gate.set()
    await fill.wait()


@pytest.fixture
def held_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldFsync]:
    held = HeldFsync().install(monkeypatch)
    yield held
    held.release()


async def test_a_large_blob_is_released_once_verified_before_its_fsync(
    blobs: BlobStore, held_fsync: HeldFsync
) -> None:
    data, digest = payload(EARLY_RELEASE_MIN_BYTES + 1000)
    fill = BlobFetcher(blobs).fill(digest, [GatedSource(data, chunk=512 * 1024)])
    # The whole body arrives while the commit is still stuck in its fsync.
    assert await read_all(fill) == data
    assert fill.writer.verified and not fill.finished
    assert not blobs.has(digest)
    await held_fsync.wait_entered()
    held_fsync.release()
    assert await fill.wait() == digest
    assert blobs.has(digest)


async def test_a_small_blob_keeps_its_last_byte_until_the_commit(
    blobs: BlobStore, held_fsync: HeldFsync
) -> None:
    data, digest = payload(100_000)
    fill = BlobFetcher(blobs).fill(digest, [GatedSource(data)])
    reader = asyncio.create_task(read_all(fill))
    await held_fsync.wait_entered()
    assert fill.writer.verified
    for _ in range(5):
        await asyncio.sleep(0)  # let the reader run: it must still be waiting
    assert not reader.done()
    held_fsync.release()
    assert await reader == data
    assert blobs.has(digest)


async def test_ranges_cover_the_span_in_order_one_per_wakeup(blobs: BlobStore) -> None:
    data, digest = payload(1 * MiB)
    source = GatedSource(data, pause_at=(256 * 1024,))
    fill = BlobFetcher(blobs).fill(digest, [source])
    await fill.ready()
    span = FollowedSpan(fill, 1000, 900_000, early_release_min_bytes=0)
    ranges = span.ranges()
    first = await anext(ranges)
    assert first[0] == 1000 and first[0] + first[1] <= 256 * 1024 - 1  # held: not the end yet
    source.gate.set()
    rest = [r async for r in ranges]
    spans = [first, *rest]
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][0] + spans[-1][1] == 900_000
    with span.open_file() as f:
        assert os.pread(f.fileno(), 899_000, 1000) == data[1000:900_000]


async def test_bytes_of_a_paused_source_reach_the_file_after_the_flush_interval(
        blobs: BlobStore) -> None:
    data, digest = payload(3 * MiB)
    source = GatedSource(data, chunk=64 * 1024, pause_at=(2 * MiB,))
    clock = FakeClock()
    fill = BlobFetcher(blobs, clock=clock).fill(digest, [source])
    await source.paused.wait()
    assert fill.writer.size == 64 * 1024  # batched in memory while chunks arrive
    clock.advance(FLUSH_INTERVAL_S)
    await asyncio.wait_for(fill.writer.wait_for(64 * 1024), 5)
    assert fill.writer.size == 2 * MiB  # the source paused: followers get what arrived
    source.gate.set()
    assert await fill.wait() == digest


async def test_a_failed_fill_cannot_be_opened_for_sending(blobs: BlobStore) -> None:
    data, digest = payload(10_000)
    fill = BlobFetcher(blobs).fill(digest, [GatedSource(bytes(len(data)))])  # wrong bytes
    with pytest.raises(FillError):
        await fill.wait()
    with pytest.raises(RegistryError) as info:
        FollowedSpan(fill).open_file()
    assert info.value.code is ErrorCode.BLOB_UNKNOWN


async def test_a_fill_writes_in_large_batches_after_its_first_chunk(blobs: BlobStore) -> None:
    data, digest = payload(3 * MiB)
    source = GatedSource(data, chunk=64 * 1024, pause_at=(2 * MiB,))
    fill = BlobFetcher(blobs, clock=FakeClock()).fill(digest, [source])  # time stands still
    await source.paused.wait()
    # The first chunk went to the file at once (time to first byte); the rest waits for a
    # FILL_FLUSH_BYTES batch (fewer thread hand-offs), not the store's 1 MiB default.
    assert fill.received == 2 * MiB
    assert fill.writer.size == 64 * 1024
    assert 2 * MiB < FILL_FLUSH_BYTES
    source.gate.set()
    assert await fill.wait() == digest
