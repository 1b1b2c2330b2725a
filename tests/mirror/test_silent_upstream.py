"""A silent upstream (accepts TCP, never answers) against the default deadlines, on the real clock.

Goals of issue 10: a cached tag is served within 3 s and the next pull at once; an uncached
manifest gets its 503 within 10 s. The upstream is a real TCP server on 127.0.0.1 that accepts and
never writes (``SilentServer``), started on the port the fake upstream served the image from.
"""

from __future__ import annotations

import asyncio
import time

from p2preg.clock import MonotonicClock
from tests.mirror.conftest import MirrorFactory
from tests.mirror.test_pull_through import ACCEPT, add_image, pull
from tests.support.silent import SilentServer
from tests.upstream.fakes import FakeUpstream


async def test_a_cached_tag_is_served_within_3s_and_the_next_pull_at_once(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url}, clock=MonotonicClock())
    image = add_image(fake_upstream, "library/busybox", "latest", seed=1)
    await pull(node, image)
    port = int(fake_upstream.url.rsplit(":", 1)[1])
    await fake_upstream.stop()
    async with SilentServer(port=port) as silent:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            got = await node.request("GET", "/v2/library/busybox/manifests/latest",
                                     headers=ACCEPT)
            timings.append(time.monotonic() - started)
            assert got.status == 200
            assert got.headers["Docker-Content-Digest"] == image.manifest_digest
        assert silent.connections >= 1  # the upstream was asked, and kept silent
        first, second, third = timings
        assert 1.5 <= first <= 3.0  # waited for the revalidation deadline (2 s), no more
        assert second < 0.5 and third < 0.5  # the refresh is late already, or the breaker open
        assert node.content.stale_served_total == 3
        assert node.metric("p2preg_stale_tags_served_total", source="local") == 3
        # the background refresh gives up after the first-byte deadline (5 s); then the breaker
        # is open and the tag is answered at once without asking
        (refresh,) = node.content.tag_refreshes
        await asyncio.wait([refresh], timeout=10)
        assert refresh.done()
        connections = silent.connections
        started = time.monotonic()
        assert (await node.request("GET", "/v2/library/busybox/manifests/latest",
                                   headers=ACCEPT)).status == 200
        assert time.monotonic() - started < 0.5
        assert silent.connections == connections


async def test_an_uncached_manifest_gets_503_within_10s(mirror_factory: MirrorFactory) -> None:
    async with SilentServer() as silent:
        node = await mirror_factory({"docker.io": silent.url}, clock=MonotonicClock())
        for reference in ("latest", "sha256:" + "ab" * 32):
            started = time.monotonic()
            reply = await node.request("GET", f"/v2/library/app/manifests/{reference}",
                                       headers=ACCEPT)
            took = time.monotonic() - started
            assert reply.status == 503, reply.body
            assert reply.error_codes() == ["UNAVAILABLE"]
            assert "timed out" in reply.error_message()
            assert took <= 10.0
        assert silent.connections == 1  # the second request was refused by the open breaker
        assert took < 0.5


async def test_the_background_refresh_records_a_tag_that_moved_while_the_upstream_was_slow(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url}, clock=MonotonicClock())
    old = add_image(fake_upstream, "library/app", "latest", seed=1)
    await pull(node, old)
    new = add_image(fake_upstream, "library/app", "latest", seed=2)  # the tag moves
    await pull(node, new)  # cached too, so the refresh only needs the HEAD
    add_image(fake_upstream, "library/app", "latest", seed=1)  # and back
    fake_upstream.hold_manifests = asyncio.Event()  # the upstream is slow from now on

    started = time.monotonic()
    got = await node.request("GET", "/v2/library/app/manifests/latest", headers=ACCEPT)
    assert 1.5 <= time.monotonic() - started <= 3.0
    assert got.headers["Docker-Content-Digest"] == new.manifest_digest  # the last known one
    (refresh,) = node.content.tag_refreshes
    fake_upstream.hold_manifests.set()  # the upstream answers, late
    await asyncio.wait([refresh], timeout=10)
    assert node.meta.resolve_tag("docker.io/library/app", "latest") == old.manifest_digest
    head = await node.request("HEAD", "/v2/library/app/manifests/latest", headers=ACCEPT)
    assert head.headers["Docker-Content-Digest"] == old.manifest_digest
