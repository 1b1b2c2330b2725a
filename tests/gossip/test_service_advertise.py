"""``GossipService.advertise_have_many``: N digests, one driver flush, every holder seen by peers;
and ``P2P.start`` re-announces a restarted node's committed blobs through it, in bounded batches
that let the event loop run in between.

Real services on 127.0.0.1 sockets with short protocol intervals; waits are bounded and wait for
a condition. The flush count is read by wrapping the driver's ``flush`` (it still runs).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from p2preg.gossip.member import MemberStatus
from p2preg.gossip.service import GossipService
from p2preg.oci.digest import Digest
from p2preg.p2p.node_glue import ADVERTISE_BATCH, P2P
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from tests.support.cluster import until
from tests.support.gossip import ServiceFactory, gossip_address, gossip_services

N_DIGESTS = 300


def digests(count: int, salt: int = 0) -> list[str]:
    return [f"sha256:{salt:08x}{i:056x}" for i in range(count)]


@pytest.fixture
async def start_service() -> AsyncIterator[ServiceFactory]:
    async with gossip_services() as start:
        yield start


class FlushCounter:
    """Wraps a service's driver ``flush``: counts the calls and still flushes."""

    def __init__(self, svc: GossipService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        driver = svc._driver
        real = driver.flush

        def counting_flush() -> None:
            self.calls += 1
            real()

        monkeypatch.setattr(driver, "flush", counting_flush)


def local_digests(svc: GossipService) -> set[str]:
    core = svc._driver.core
    return set(core.catalog.digests_of(core.name))


async def test_many_digests_are_advertised_with_a_single_flush(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await start_service("a", seed=1)
    flushes = FlushCounter(a, monkeypatch)
    wanted = digests(N_DIGESTS)
    assert a.advertise_have_many(wanted) == N_DIGESTS
    assert flushes.calls == 1
    assert local_digests(a) == set(wanted)


async def test_any_iterable_works_and_repeats_change_nothing(start_service: ServiceFactory) -> None:
    a = await start_service("a", seed=1)
    assert a.advertise_have_many(d for d in digests(5)) == 5
    version = a._driver.core.catalog.local_version
    assert a.advertise_have_many(digests(5)) == 5  # counted as given, already known: no update
    assert a._driver.core.catalog.local_version == version
    assert a.advertise_have_many([]) == 0


async def test_the_peer_sees_this_node_holding_every_digest_advertised_at_once(
    start_service: ServiceFactory,
) -> None:
    a = await start_service("a", seed=1)
    b = await start_service("b", seed=2, join=(gossip_address(a),))
    await until(lambda: sum(m.status == MemberStatus.ALIVE for m in b.members()) == 2)
    wanted = digests(N_DIGESTS, salt=7)
    a.advertise_have_many(wanted)
    await until(lambda: all([m.name for m in b.holders(d)] == ["a"] for d in wanted))
    assert b.stats()["catalog_entries"] == N_DIGESTS


def record_batches(svc: GossipService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the ``advertise_have_many`` calls on ``svc``; ``advertise_have`` fails the test."""
    batches: list[int] = []
    real_many = svc.advertise_have_many

    def counting_many(many: Iterable[str]) -> int:
        count = real_many(many)
        batches.append(count)
        return count

    def one_by_one(digest: str) -> None:
        raise AssertionError("P2P.start must not advertise blobs one flush at a time")

    monkeypatch.setattr(svc, "advertise_have", one_by_one)
    monkeypatch.setattr(svc, "advertise_have_many", counting_many)
    return batches


async def test_p2p_start_announces_every_committed_blob_in_one_batch(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StoreLayout(tmp_path / "store")
    layout.ensure()
    blobs = BlobStore(layout)
    rng = random.Random(3)
    committed = {str(await blobs.put_bytes(rng.randbytes(64))) for _ in range(25)}
    a = await start_service("a", seed=1)
    batches = record_batches(a, monkeypatch)
    p2p = P2P(a, blobs, rng=random.Random(4))
    try:
        await p2p.start()
    finally:
        await p2p.close()
    assert batches == [25]
    assert local_digests(a) == committed


class ListedBlobs:
    """Stands in for a big ``BlobStore``: only ``digests()``, which ``P2P.start`` walks."""

    def __init__(self, count: int) -> None:
        self._digests = [Digest("sha256", f"{i:064x}") for i in range(count)]

    def digests(self) -> Iterator[Digest]:
        return iter(self._digests)


async def test_p2p_start_with_many_blobs_advertises_in_bounded_batches_and_yields_between(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await start_service("a", seed=1)
    batches = record_batches(a, monkeypatch)
    seen_between: set[int] = set()
    done = asyncio.Event()

    async def other_work() -> None:  # e.g. answering a peer's probe during start-up
        while not done.is_set():
            seen_between.add(len(batches))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(other_work())
    p2p = P2P(a, ListedBlobs(5000), rng=random.Random(4))  # type: ignore[arg-type]
    try:
        await p2p.start()
    finally:
        done.set()
        await watcher
        await p2p.close()
    assert sum(batches) == 5000
    assert len(batches) == 3 and max(batches) <= ADVERTISE_BATCH
    assert {1, 2} <= seen_between  # the event loop ran between the batches
    assert len(local_digests(a)) == 5000
