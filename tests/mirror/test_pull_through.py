"""Mirror mode over HTTP: pull-through, ?ns= routing, tags vs digests, outages, wrong bytes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from p2preg.clock import MonotonicClock
from p2preg.fetch.reader import EARLY_RELEASE_MIN_BYTES
from p2preg.oci import mediatypes
from p2preg.oci.digest import parse_digest
from p2preg.pull.mirror import cache_repository
from p2preg.registry import fileslice
from p2preg.upstream.config import UpstreamConfig
from tests.mirror.conftest import MirrorFactory, MirrorNode
from tests.storage.heldfsync import HeldFsync
from tests.upstream.fakes import FakeUpstream

ACCEPT = {"Accept": ", ".join([mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST,
                               mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST])}


@dataclass
class Image:
    repo: str
    tag: str
    manifest_digest: str
    blobs: dict[str, bytes]


def add_image(fake: FakeUpstream, repo: str, tag: str, *, seed: int = 0,
              layer_sizes: tuple[int, ...] = (100_000, 3_000)) -> Image:
    rng = random.Random(seed)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [rng.randbytes(n) for n in layer_sizes]
    blobs = {fake.add_blob(data): data for data in [config, *layers]}
    digests = list(blobs)
    manifest = {
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": digests[0], "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d,
                    "size": len(blobs[d])} for d in digests[1:]],
    }
    return Image(repo, tag, fake.add_manifest(repo, tag, manifest), blobs)


async def pull(node: MirrorNode, image: Image, ns: str | None = None) -> None:
    """What a client does: the tag, the manifest by digest, every blob; checks every byte."""
    query = f"?ns={ns}" if ns else ""
    head = await node.request("HEAD", f"/v2/{image.repo}/manifests/{image.tag}{query}",
                              headers=ACCEPT)
    assert head.status == 200, head.body
    assert head.headers["Docker-Content-Digest"] == image.manifest_digest
    got = await node.request("GET", f"/v2/{image.repo}/manifests/{image.manifest_digest}{query}",
                             headers=ACCEPT)
    assert got.status == 200
    assert "sha256:" + hashlib.sha256(got.body).hexdigest() == image.manifest_digest
    for digest, data in image.blobs.items():
        blob = await node.request("GET", f"/v2/{image.repo}/blobs/{digest}{query}")
        assert blob.status == 200, blob.body
        assert blob.body == data


async def test_first_pull_fetches_everything_and_the_second_is_served_locally(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    image = add_image(fake_upstream, "library/busybox", "latest")
    node = await mirror_factory({"docker.io": fake_upstream.url})
    await pull(node, image)
    assert all(fake_upstream.blob_gets(d) == 1 for d in image.blobs)
    assert node.metric("p2preg_upstream_requests_total", registry="docker.io", kind="blob",
                       status="200") == len(image.blobs)
    before = len(fake_upstream.requests)
    await pull(node, image)
    again = fake_upstream.requests[before:]
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in again] == [("HEAD", "latest")]
    assert node.metric("p2preg_cache_requests_total", result="hit") >= 1 + len(image.blobs)
    await asyncio.sleep(0)  # let the background link tasks run
    assert node.meta.blob_linked("docker.io/library/busybox", next(iter(image.blobs)))


async def test_ns_selects_the_upstream_and_repositories_stay_apart(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    ghcr = await FakeUpstream().start()
    try:
        hub_image = add_image(fake_upstream, "org/app", "v1", seed=1)
        ghcr_image = add_image(ghcr, "org/app", "v1", seed=2)
        node = await mirror_factory({"docker.io": fake_upstream.url, "ghcr.io": ghcr.url})
        await pull(node, ghcr_image, ns="ghcr.io")
        await pull(node, hub_image, ns="docker.io")
        await pull(node, hub_image)  # no ns: docker.io
        assert ghcr.count("HEAD", "v1") == 1
        assert fake_upstream.count("HEAD", "v1") == 2
        assert node.meta.resolve_tag("ghcr.io/org/app", "v1") == ghcr_image.manifest_digest
        assert node.meta.resolve_tag("docker.io/org/app", "v1") == hub_image.manifest_digest
    finally:
        await ghcr.stop()


async def test_a_host_name_as_first_path_component_selects_that_upstream(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    ghcr = await FakeUpstream().start()
    try:
        image = add_image(ghcr, "org/app", "v1", seed=3)
        node = await mirror_factory({"docker.io": fake_upstream.url, "ghcr.io": ghcr.url})
        prefixed = Image("ghcr.io/org/app", image.tag, image.manifest_digest, image.blobs)
        await pull(node, prefixed)  # what podman sends for a mirror location "<node>/ghcr.io"
        assert ghcr.count("HEAD", "v1") == 1
        assert fake_upstream.requests == []
        unknown = await node.request("GET", "/v2/quay.io/org/app/manifests/v1")
        assert unknown.error_codes() == ["NAME_UNKNOWN"]
    finally:
        await ghcr.stop()


async def test_an_unconfigured_registry_gets_a_clear_error(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    reply = await node.request("GET", "/v2/org/app/manifests/v1?ns=quay.io")
    assert reply.status == 404
    assert reply.error_codes() == ["NAME_UNKNOWN"]
    assert "'quay.io' is not an upstream of this mirror (configured: docker.io)" in \
        reply.error_message()
    blob = await node.request("GET", "/v2/org/app/blobs/sha256:" + "a" * 64 + "?ns=quay.io")
    assert blob.error_codes() == ["NAME_UNKNOWN"]
    assert fake_upstream.requests == []


async def test_a_moved_tag_is_seen_at_once(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    first = add_image(fake_upstream, "library/app", "latest", seed=1)
    await pull(node, first)
    second = add_image(fake_upstream, "library/app", "latest", seed=2)
    reply = await node.request("GET", "/v2/library/app/manifests/latest", headers=ACCEPT)
    assert reply.headers["Docker-Content-Digest"] == second.manifest_digest
    assert node.meta.resolve_tag("docker.io/library/app", "latest") == second.manifest_digest


async def test_a_tag_deleted_upstream_is_not_served_from_the_cache(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "old")
    await pull(node, image)
    del fake_upstream.manifests[("library/app", "old")]
    reply = await node.request("GET", "/v2/library/app/manifests/old", headers=ACCEPT)
    assert reply.status == 404
    assert reply.error_codes() == ["MANIFEST_UNKNOWN"]


async def test_upstream_down_cached_image_pulls_by_tag_and_digest_uncached_fails_fast(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url}, clock=MonotonicClock())
    cached = add_image(fake_upstream, "library/busybox", "latest", seed=1)
    uncached = add_image(fake_upstream, "library/other", "latest", seed=2)
    await pull(node, cached)
    await fake_upstream.stop()

    await pull(node, cached)  # tag from the last known digest, the rest from the store
    assert node.content.stale_served_total == 1

    started = time.monotonic()
    reply = await node.request("GET", "/v2/library/other/manifests/latest", headers=ACCEPT)
    assert time.monotonic() - started < 5
    assert reply.status == 503
    assert reply.error_codes() == ["UNAVAILABLE"]
    message = reply.error_message()
    assert message.startswith("upstream docker.io: HEAD ")
    assert "Cannot connect" in message or "refused" in message
    blob_digest = next(iter(uncached.blobs))
    started = time.monotonic()
    blob = await node.request("GET", f"/v2/library/other/blobs/{blob_digest}")
    assert time.monotonic() - started < 5
    assert blob.status == 503
    assert "upstream docker.io" in blob.error_message()


async def test_the_last_known_digest_is_not_served_beyond_max_staleness(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url}, tag_max_stale_s=600)
    image = add_image(fake_upstream, "library/app", "latest")
    await pull(node, image)
    fake_upstream.script["manifests/latest"] = [(503, {})] * 20
    node.wall.t += 599
    ok = await node.request("GET", "/v2/library/app/manifests/latest", headers=ACCEPT)
    assert ok.status == 200
    node.wall.t += 2
    stale = await node.request("GET", "/v2/library/app/manifests/latest", headers=ACCEPT)
    assert stale.status == 503
    assert "answered 503" in stale.error_message()


async def test_manifests_by_digest_are_cached_for_good(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "latest")
    path = f"/v2/library/app/manifests/{image.manifest_digest}"
    assert (await node.request("GET", path, headers=ACCEPT)).status == 200
    fake_upstream.script["manifests/" + image.manifest_digest] = [(500, {})] * 20
    assert (await node.request("GET", path, headers=ACCEPT)).status == 200
    assert fake_upstream.count("GET", image.manifest_digest) == 1


async def test_index_children_are_fetched_when_asked_for(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    amd = add_image(fake_upstream, "library/multi", "amd", seed=1)
    arm = add_image(fake_upstream, "library/multi", "arm", seed=2)
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": img.manifest_digest,
         "size": len(fake_upstream.manifests[("library/multi", img.manifest_digest)][1]),
         "platform": {"os": "linux", "architecture": arch}}
        for img, arch in ((amd, "amd64"), (arm, "arm64"))]}
    index_digest = fake_upstream.add_manifest("library/multi", "latest", index)
    reply = await node.request("GET", "/v2/library/multi/manifests/latest", headers=ACCEPT)
    assert reply.headers["Docker-Content-Digest"] == index_digest
    assert reply.headers["Content-Type"] == mediatypes.OCI_INDEX
    assert fake_upstream.count("GET", amd.manifest_digest) == 0  # not fetched eagerly
    child = await node.request("GET", f"/v2/library/multi/manifests/{arm.manifest_digest}",
                               headers=ACCEPT)
    assert child.status == 200
    assert fake_upstream.count("GET", arm.manifest_digest) == 1


async def test_pushes_to_a_mirror_are_refused(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    reply = await node.request("POST", "/v2/library/app/blobs/uploads/")
    assert reply.status == 405
    assert reply.error_codes() == ["UNSUPPORTED"]


async def test_range_of_an_uncached_blob_and_head_without_download(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "latest", layer_sizes=(500_000,))
    digest, data = list(image.blobs.items())[1]
    head = await node.request("HEAD", f"/v2/library/app/blobs/{digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert fake_upstream.blob_gets(digest) == 0
    part = await node.request("GET", f"/v2/library/app/blobs/{digest}",
                              headers={"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert part.body == data[1000:2000]


async def test_wrong_bytes_from_the_upstream_abort_the_response_and_commit_nothing(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "latest", layer_sizes=(3_000_000,))
    digest, data = list(image.blobs.items())[1]
    fake_upstream.blob_body = lambda d, body: bytes(len(body))  # right length, wrong bytes
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with node.http.get(f"{node.base_url}/v2/library/app/blobs/{digest}") as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(received) < len(data)
    assert not node.blobs.has(parse_digest(digest))
    assert node.fetcher.wrong_bytes_total == 1
    assert node.metric("p2preg_blob_fills_total", source="upstream", outcome="wrong_bytes") == 1
    fake_upstream.blob_body = None  # the upstream is fixed: the next request fetches again
    again = await node.request("GET", f"/v2/library/app/blobs/{digest}")
    assert again.body == data


async def test_token_protected_upstream_with_a_token_expiring_between_requests(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.token_auth = True
    fake_upstream.token_lifetime_s = 60
    node = await mirror_factory(
        {"docker.io": UpstreamConfig("docker.io", fake_upstream.url)}, clock=fake_upstream.clock)
    image = add_image(fake_upstream, "library/busybox", "latest")
    await pull(node, image)
    assert len(fake_upstream.token_requests) == 1
    fake_upstream.clock.t += 3600
    other = add_image(fake_upstream, "library/busybox", "v2", seed=9)
    await pull(node, other)
    assert len(fake_upstream.token_requests) == 2
    assert all(r.status != 401 for r in fake_upstream.requests[1:])  # renewed before expiry


async def test_concurrent_manifest_requests_share_one_upstream_request(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "latest")
    replies = await asyncio.gather(*(
        node.request("GET", f"/v2/library/app/manifests/{image.manifest_digest}", headers=ACCEPT)
        for _ in range(10)))
    assert {r.status for r in replies} == {200}
    assert fake_upstream.count("GET", image.manifest_digest) == 1


async def test_a_client_that_disconnects_does_not_abort_the_fill(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    image = add_image(fake_upstream, "library/app", "latest", layer_sizes=(8_000_000,))
    digest, data = list(image.blobs.items())[1]
    async with node.http.get(f"{node.base_url}/v2/library/app/blobs/{digest}") as resp:
        assert resp.status == 200
        first = await resp.content.read(1000)
        fill = node.fetcher.in_flight(parse_digest(digest))
        resp.close()  # the client goes away after 1000 bytes
    assert first == data[:1000]
    if fill is not None:  # (it may already be complete on a fast machine)
        assert await fill.wait() == parse_digest(digest)
    assert node.blobs.has(parse_digest(digest))
    assert fake_upstream.blob_gets(digest) == 1
    again = await node.request("GET", f"/v2/library/app/blobs/{digest}")
    assert again.body == data
    assert fake_upstream.blob_gets(digest) == 1


async def test_a_blob_sent_without_content_length_is_served_once_complete(
    mirror_factory: MirrorFactory,
) -> None:
    data = random.Random(11).randbytes(700_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 100_000):
            await resp.write(data[i:i + 100_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v2/library/app/blobs/{digest}", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        node = await mirror_factory({"docker.io": f"http://127.0.0.1:{port}"})
        reply = await node.request("GET", f"/v2/library/app/blobs/{digest}")
        assert reply.status == 200
        assert reply.body == data
        assert reply.headers["Content-Length"] == str(len(data))
    finally:
        await runner.cleanup()


def test_cached_repositories_are_named_by_registry_with_ports_spelled_out() -> None:
    assert cache_repository("docker.io", "library/busybox") == "docker.io/library/busybox"
    assert cache_repository("127.0.0.1:5056", "org/app") == "127.0.0.1__5056/org/app"


@pytest.fixture
def held_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldFsync]:
    held = HeldFsync(min_bytes=EARLY_RELEASE_MIN_BYTES).install(monkeypatch)
    yield held
    held.release()


async def test_a_large_blob_reaches_the_client_before_the_commit_fsync_ends(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream, held_fsync: HeldFsync
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    data = random.Random(12).randbytes(EARLY_RELEASE_MIN_BYTES + 5000)
    digest = fake_upstream.add_blob(data)
    reply = await node.request("GET", f"/v2/library/app/blobs/{digest}")
    assert reply.status == 200 and reply.body == data  # complete while the fsync is held
    fill = node.fetcher.in_flight(parse_digest(digest))
    assert fill is not None and not node.blobs.has(parse_digest(digest))
    await held_fsync.wait_entered()
    held_fsync.release()
    assert await fill.wait() == parse_digest(digest)
    assert node.blobs.has(parse_digest(digest))


async def test_wrong_bytes_of_a_large_blob_never_complete_a_response(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    data = random.Random(13).randbytes(EARLY_RELEASE_MIN_BYTES + 5000)
    digest = fake_upstream.add_blob(data)
    fake_upstream.blob_body = lambda d, body: bytes(len(body))
    received = 0
    with pytest.raises(aiohttp.ClientPayloadError):
        async with node.http.get(f"{node.base_url}/v2/library/app/blobs/{digest}") as resp:
            async for chunk in resp.content.iter_any():
                received += len(chunk)
    assert received < len(data)
    assert not node.blobs.has(parse_digest(digest))


async def test_a_blob_still_arriving_is_sent_from_its_file_with_sendfile(
    mirror_factory: MirrorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(14).randbytes(3 * 1024 * 1024 + 77)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    gate = asyncio.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[:half])
        await gate.wait()
        await resp.write(data[half:])
        await resp.write_eof()
        return resp

    sent: list[int] = []
    real_send = fileslice.SocketSender.send

    async def spy_send(self: Any, offset: int, count: int) -> None:
        sent.append(count)
        await real_send(self, offset, count)

    monkeypatch.setattr(fileslice.SocketSender, "send", spy_send)

    app = web.Application()
    app.router.add_get("/v2/library/app/blobs/{digest}", gated)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        node = await mirror_factory({"docker.io": f"http://127.0.0.1:{runner.addresses[0][1]}"})
        async with node.http.get(f"{node.base_url}/v2/library/app/blobs/{digest}") as resp:
            assert resp.status == 200
            first = await resp.content.readexactly(1000)  # before the upstream sent the rest
            assert sent, "the first bytes went out with sendfile while the blob was arriving"
            gate.set()
            body = first + await resp.read()
        assert body == data
        assert sum(sent) == len(data) and len(sent) >= 2
    finally:
        gate.set()
        await runner.cleanup()
