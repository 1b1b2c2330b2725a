"""A mirror on a nearly full disk: room is made by eviction before a fill starts, a blob that
cannot fit is a 507 before any 200 (never a truncated body), and it is not fetched again and
again while clients retry, also when the disk fills up at the blob's commit. The disk is a small
tmpfs the test mounts (root only)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci.digest import parse_digest
from tests.p2p.harness import CountingUpstream
from tests.storage.heldfsync import HeldFsync
from tests.support.cluster import until
from tests.support.smallfs import inodes_used_up, small_tmpfs

FS_BYTES = 24 * 1024 * 1024
MIB = 1024 * 1024
REPO = "library/app"


@pytest.fixture
def inodes() -> int | None:
    return None  # no cap beyond the size's


@pytest.fixture
async def node(tmp_path: Path, counting_upstream: CountingUpstream,
               inodes: int | None) -> AsyncIterator[Node]:
    with small_tmpfs(tmp_path / "fs", FS_BYTES, inodes=inodes) as root:
        node = Node(Config(mode="mirror", listen="127.0.0.1:0", data_dir=str(root / "store"),
                           upstream=(f"docker.io=http://{counting_upstream.host}",),
                           cache_min_age_s=0, scrub_rate_mib_s=0))
        await node.start()
        assert node.blobs is not None
        node.blobs.room.margin_bytes = MIB
        try:
            yield node
        finally:
            await node.stop()


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def get(http: aiohttp.ClientSession, node: Node, digest: str) -> tuple[int, bytes]:
    async with http.get(f"{node.url}/v2/{REPO}/blobs/{digest}") as response:
        return response.status, await response.read()


async def test_a_blob_larger_than_the_disk_is_507_before_any_200_and_not_refetched(
    node: Node, counting_upstream: CountingUpstream
) -> None:
    huge = counting_upstream.add(blob(1, 40 * MIB))
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            status, body = await get(http, node, huge)
            assert status == 507
            error = json.loads(body)["errors"][0]
            assert error["code"] == "UNKNOWN"
            assert "does not fit" in error["message"] or "did not fit" in error["message"]
            assert error["detail"]["free_bytes"] > 0
        async with http.get(f"{node.url}/metrics") as response:
            metrics = await response.text()
    assert "p2preg_store_no_room_total 3.0" in metrics
    assert counting_upstream.blob_gets[huge] == 1  # the retries were refused at once
    assert node.blobs is not None
    assert not node.blobs.has(parse_digest(huge))
    assert list(node.layout.tmp_dir.iterdir()) == []  # nothing half-written left


async def test_room_is_made_by_evicting_the_least_recently_used_blobs(
    node: Node, counting_upstream: CountingUpstream
) -> None:
    datas = [blob(10 + i, 7 * MIB) for i in range(4)]
    digests = [counting_upstream.add(data) for data in datas]
    async with aiohttp.ClientSession() as http:
        for digest, data in zip(digests, datas, strict=True):
            assert await get(http, node, digest) == (200, data)
    assert node.blobs is not None
    held = [node.blobs.has(parse_digest(d)) for d in digests]
    assert held[-1] and not held[0]  # the oldest made room for the newest
    assert node.maintenance is not None and node.maintenance.room_evictions_total >= 1
    assert all(counting_upstream.blob_gets[d] == 1 for d in digests)


@pytest.mark.parametrize("inodes", [512])
async def test_a_disk_that_fills_up_at_the_commit_refuses_the_digest_and_is_not_refetched(
    node: Node, counting_upstream: CountingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(30, 2 * MIB)
    digest = counting_upstream.add(data)
    held = HeldFsync(min_bytes=MIB).install(monkeypatch)
    try:
        async with aiohttp.ClientSession() as http:
            first = asyncio.create_task(get(http, node, digest))
            await held.wait_entered()  # every byte arrived and matched; the commit waits
            with inodes_used_up(node.layout.root.parent / "filler"):
                held.release()  # ... and finds no inode for the blob's name
                with pytest.raises(aiohttp.ClientPayloadError):
                    await first  # a small blob's last bytes wait for the commit: aborted
                assert node.blobs is not None
                await until(lambda: not node.blobs.in_progress(parse_digest(digest)))
            status, body = await get(http, node, digest)  # room again, but refused a while
            assert status == 507
            assert "did not fit" in json.loads(body)["errors"][0]["message"]
            async with http.get(f"{node.url}/metrics") as response:
                metrics = await response.text()
    finally:
        held.release()
    assert "p2preg_store_no_room_total 2.0" in metrics  # the commit, then the retry
    assert counting_upstream.blob_gets[digest] == 1
    assert not node.blobs.has(parse_digest(digest))
    assert list(node.layout.tmp_dir.iterdir()) == []  # the partial is gone
