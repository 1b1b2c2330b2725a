"""The mirror in front of a real CNCF Distribution 2.8 origin: single flight and outages."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import pytest

from p2preg.clock import MonotonicClock
from p2preg.oci import mediatypes
from tests.conftest import require_tool
from tests.mirror.conftest import MirrorFactory
from tests.support.daemons import distribution
from tests.upstream.seed import push_simple_image

pytestmark = pytest.mark.clients

MiB = 1 << 20
ACCEPT = {"Accept": f"{mediatypes.OCI_MANIFEST}, {mediatypes.OCI_INDEX}"}


async def test_twenty_concurrent_gets_of_an_uncached_64mib_blob_make_one_upstream_get(
    mirror_factory: MirrorFactory,
) -> None:
    require_tool("docker-registry")
    big = random.Random(64).randbytes(64 * MiB)
    want = hashlib.sha256(big).hexdigest()
    with distribution() as origin:
        _, _, digests = await push_simple_image(origin.url, "library/big", "latest", [big])
        layer = digests[1]
        del big
        node = await mirror_factory({"docker.io": origin.url})

        async def one_client() -> tuple[int, str, int]:
            hasher = hashlib.sha256()
            async with node.http.get(f"{node.base_url}/v2/library/big/blobs/{layer}") as resp:
                async for chunk in resp.content.iter_chunked(1 * MiB):
                    hasher.update(chunk)
                return resp.status, hasher.hexdigest(), resp.content_length or 0

        results = await asyncio.gather(*(one_client() for _ in range(20)))
        assert [r[0] for r in results] == [200] * 20
        assert {r[1] for r in results} == {want}
        assert {r[2] for r in results} == {64 * MiB}
        assert origin.blob_gets(layer) == 1  # counted at the upstream, from its own log
        assert node.fetcher.started_total == 1
        assert node.metric("p2preg_upstream_requests_total", registry="docker.io",
                           kind="blob", status="200") == 1


async def test_origin_down_cached_image_still_pulls_and_uncached_fails_naming_the_cause(
    mirror_factory: MirrorFactory,
) -> None:
    require_tool("docker-registry")
    with distribution() as origin:
        cached_digest, _, cached_blobs = await push_simple_image(
            origin.url, "library/busybox", "latest", [b"layer-one" * 1000])
        _, _, other_blobs = await push_simple_image(
            origin.url, "library/other", "latest", [b"layer-two" * 1000], config=b'{"x":1}')
        node = await mirror_factory({"docker.io": origin.url}, clock=MonotonicClock())
        assert (await node.request("GET", "/v2/library/busybox/manifests/latest",
                                   headers=ACCEPT)).status == 200
        for digest in cached_blobs:
            assert (await node.request("GET", f"/v2/library/busybox/blobs/{digest}")).status == 200
    # the origin is stopped now
    by_tag = await node.request("GET", "/v2/library/busybox/manifests/latest", headers=ACCEPT)
    assert by_tag.status == 200
    assert by_tag.headers["Docker-Content-Digest"] == cached_digest
    by_digest = await node.request("GET", f"/v2/library/busybox/manifests/{cached_digest}",
                                   headers=ACCEPT)
    assert by_digest.status == 200
    for digest in cached_blobs:
        assert (await node.request("GET", f"/v2/library/busybox/blobs/{digest}")).status == 200

    started = time.monotonic()
    missing = await node.request("GET", "/v2/library/other/manifests/latest", headers=ACCEPT)
    assert time.monotonic() - started < 5
    assert missing.status == 503
    assert missing.error_codes() == ["UNAVAILABLE"]
    assert "upstream docker.io" in missing.error_message()
    assert origin.host in missing.error_message()
    started = time.monotonic()
    blob = await node.request("GET", f"/v2/library/other/blobs/{other_blobs[1]}")
    assert time.monotonic() - started < 5
    assert blob.error_codes() == ["UNAVAILABLE"]
