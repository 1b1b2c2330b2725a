"""A whole registry-mode ``Node``: users delete an image, the node gets its disk back by itself.

Images are pushed and deleted over HTTP on 127.0.0.1; the node's wall clock is a ``FakeClock``
started at the real time (the pushed files carry real mtimes and ctimes), then moved past the
grace period by hand. The maintenance loop is observed with ``wait_until``: no wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.clock import FakeClock
from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci.digest import Digest, parse_digest
from p2preg.storage.maintenance import Maintenance

GRACE_S = 3600.0
GC_INTERVAL_S = 600.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return str(Digest.of_bytes(data))


class Client:
    """Push, delete and read on one node."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def status(self, method: str, path: str) -> int:
        async with self.http.request(method, self.url + path) as response:
            await response.read()
            return response.status

    async def push_blob(self, repo: str, data: bytes) -> None:
        path = f"/v2/{repo}/blobs/uploads/?digest={digest_of(data)}"
        async with self.http.post(self.url + path, data=data) as response:
            assert response.status == 201, await response.text()

    async def push_image(self, repo: str, tag: str, config: bytes, layers: list[bytes]) -> str:
        for blob in (config, *layers):
            await self.push_blob(repo, blob)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
                       for layer in layers],
        }).encode()
        async with self.http.put(self.url + f"/v2/{repo}/manifests/{tag}", data=body,
                                 headers={"Content-Type": OCI_MANIFEST}) as response:
            assert response.status == 201, await response.text()
        return digest_of(body)

    async def catalog(self) -> list[str]:
        async with self.http.get(self.url + "/v2/_catalog") as response:
            return list((await response.json())["repositories"])

    async def metric(self, name: str) -> float:
        async with self.http.get(self.url + "/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not exported")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Node, FakeClock, Client]]:
    clock = FakeClock(time.time())  # the pushed files' times are real: start from them
    config = Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path),
                    gc_interval_s=GC_INTERVAL_S, gc_grace_s=GRACE_S)
    node = Node(config, wall_clock=clock)
    await node.start()
    try:
        assert node.maintenance is not None
        await asyncio.wait_for(node.maintenance.wait_for_passes(1), 10)
        async with aiohttp.ClientSession() as http:
            yield node, clock, Client(http, node.url)
    finally:
        await node.stop()


async def next_gc(upkeep: Maintenance, clock: FakeClock, seconds: float) -> None:
    runs = upkeep.gc_runs_total
    clock.advance(seconds)
    await asyncio.wait_for(upkeep.wait_until(lambda: upkeep.gc_runs_total > runs), 10)


async def test_a_deleted_images_blobs_are_collected_and_a_shared_layer_stays(
    node: tuple[Node, FakeClock, Client],
) -> None:
    registry, clock, client = node
    upkeep = registry.maintenance
    assert upkeep is not None
    shared = b"a base layer both images use"
    own_config, own_layer = b'{"image": "old"}', b"a layer only the old image has"
    old = await client.push_image("team/old", "v1", own_config, [shared, own_layer])
    await client.push_image("team/live", "v1", b'{"image": "live"}', [shared])
    assert await client.status("DELETE", f"/v2/team/old/manifests/{old}") == 202

    # Within the grace period nothing goes: the deleted image may be pushed again.
    await next_gc(upkeep, clock, GC_INTERVAL_S)
    assert upkeep.gc_deleted_blobs_total == 0
    assert registry.layout.blob_path(Digest.of_bytes(own_layer)).exists()

    await next_gc(upkeep, clock, GRACE_S)

    for gone in (own_layer, own_config):
        assert await client.status("GET", f"/v2/team/old/blobs/{digest_of(gone)}") == 404
        assert not registry.layout.blob_path(Digest.of_bytes(gone)).exists()
    assert not registry.layout.blob_path(parse_digest(old)).exists()  # the manifest's bytes
    assert await client.status("GET", f"/v2/team/live/blobs/{digest_of(shared)}") == 200
    assert await client.status("GET", "/v2/team/live/manifests/v1") == 200
    assert await client.catalog() == ["team/live"]  # the old repository's links went too
    assert await client.metric("p2preg_gc_deleted_blobs_total") == 3  # manifest, config, layer
    assert await client.metric("p2preg_gc_freed_bytes_total") == upkeep.gc_freed_bytes_total > 0
    assert await client.metric("p2preg_gc_runs_total") == upkeep.gc_runs_total == 3
    assert await client.metric("p2preg_gc_last_duration_seconds") >= 0
    assert await client.metric("p2preg_gc_last_run_timestamp_seconds") == clock.now()


async def test_a_layer_read_within_the_grace_period_is_kept_for_a_push_that_names_it(
    node: tuple[Node, FakeClock, Client],
) -> None:
    registry, clock, client = node
    upkeep = registry.maintenance
    assert upkeep is not None
    layer = b"a layer whose image was deleted"
    old = await client.push_image("app", "v1", b'{"v": 1}', [layer])
    assert await client.status("DELETE", f"/v2/app/manifests/{old}") == 202
    await next_gc(upkeep, clock, GRACE_S)
    # A client pushing v1 again checks the layer first, finds it, and skips the upload.
    assert await client.status("HEAD", f"/v2/app/blobs/{digest_of(layer)}") == 200

    await next_gc(upkeep, clock, GC_INTERVAL_S)

    assert upkeep.last_gc is not None and upkeep.last_gc.kept.get("recently_read") == 1
    assert await client.status("GET", f"/v2/app/blobs/{digest_of(layer)}") == 200


async def test_a_node_with_gc_disabled_keeps_everything(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    config = Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path),
                    gc_interval_s=0)
    registry = Node(config, wall_clock=clock)
    await registry.start()
    try:
        upkeep = registry.maintenance
        assert upkeep is not None
        async with aiohttp.ClientSession() as http:
            client = Client(http, registry.url)
            await client.push_blob("app", b"unreferenced for ever")
            clock.advance(10 * GRACE_S)
            await asyncio.wait_for(upkeep.wait_for_passes(2), 10)
            assert upkeep.gc_runs_total == 0
            path = f"/v2/app/blobs/{digest_of(b'unreferenced for ever')}"
            assert await client.status("GET", path) == 200
            assert await client.metric("p2preg_gc_runs_total") == 0
    finally:
        await registry.stop()
