"""UpstreamClient against a faithful fake registry + token server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest, parse_digest
from p2preg.upstream.client import UpstreamClient
from p2preg.upstream.config import (
    Credentials,
    UpstreamConfig,
    build_upstreams,
    upstreams_from_toml,
)
from p2preg.upstream.errors import (
    UpstreamDenied,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from tests.support.silent import SilentServer
from tests.upstream.fakes import FakeUpstream, StepClock

MANIFEST = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
            "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:" + "0" * 64,
                       "size": 2}, "layers": []}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.stop()


def make_client(fake: FakeUpstream, **overrides: object) -> UpstreamClient:
    config = UpstreamConfig("docker.io", fake.url, **overrides)  # type: ignore[arg-type]
    return UpstreamClient(config, clock=fake.clock, rng=random.Random(0))


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[UpstreamClient]:
    c = make_client(upstream)
    yield c
    await c.close()


async def test_manifest_by_tag_comes_with_its_verified_digest(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    digest = upstream.add_manifest("library/busybox", "latest", MANIFEST)
    got = await client.get_manifest("library/busybox", "latest")
    assert str(got.digest) == digest
    assert got.media_type == mediatypes.OCI_MANIFEST
    assert hashlib.sha256(got.body).hexdigest() == digest.split(":")[1]


async def test_head_manifest_gives_digest_type_and_size(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    digest = upstream.add_manifest("library/busybox", "latest", MANIFEST)
    head = await client.head_manifest("library/busybox", "latest")
    assert str(head.digest) == digest
    assert head.media_type == mediatypes.OCI_MANIFEST
    assert head.size == len(upstream.manifests[("library/busybox", "latest")][1])


async def test_all_manifest_types_are_accepted_from_the_upstream(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.add_manifest("a", "t", MANIFEST)
    await client.get_manifest("a", "t")
    accept = upstream.requests[-1].headers["Accept"]
    for media_type in (mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST,
                       mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST):
        assert media_type in accept


async def test_a_manifest_whose_body_does_not_match_the_requested_digest_is_refused(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    wrong = "sha256:" + "a" * 64
    upstream.manifests[("a", wrong)] = (mediatypes.OCI_MANIFEST, b'{"schemaVersion": 2}')
    with pytest.raises(UpstreamProtocolError, match="does not match"):
        await client.get_manifest("a", wrong)


async def test_missing_manifest_and_blob_are_not_found(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamNotFound):
        await client.get_manifest("nope", "latest")
    with pytest.raises(UpstreamNotFound):
        await client.open_blob("nope", Digest.of_bytes(b"x"))


# -- the Bearer challenge flow --------------------------------------------------------------------


async def test_token_flow_fetches_one_token_then_reuses_it(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.add_manifest("library/busybox", "latest", MANIFEST)
    await client.get_manifest("library/busybox", "latest")
    await client.get_manifest("library/busybox", "latest")
    await client.head_manifest("library/busybox", "latest")
    assert upstream.token_requests == [
        {"scope": "repository:library/busybox:pull", "service": "fake-registry"}]
    statuses = [r.status for r in upstream.requests]
    assert statuses == [401, 200, 200, 200]  # one challenge, then the token is sent up front


async def test_each_repository_gets_its_own_scoped_token(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.add_manifest("a", "t", MANIFEST)
    upstream.add_manifest("b", "t", MANIFEST)
    await client.get_manifest("a", "t")
    await client.get_manifest("b", "t")
    assert [q["scope"] for q in upstream.token_requests] == [
        "repository:a:pull", "repository:b:pull"]


async def test_an_expired_token_is_renewed_before_the_next_request(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.token_lifetime_s = 60
    upstream.add_manifest("a", "t", MANIFEST)
    await client.get_manifest("a", "t")
    upstream.clock.t += 61  # the token expired between two requests (for both sides)
    await client.get_manifest("a", "t")
    assert len(upstream.token_requests) == 2
    assert [r.status for r in upstream.requests] == [401, 200, 200]


async def test_a_token_the_upstream_stops_accepting_is_replaced_once(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.add_manifest("a", "t", MANIFEST)
    await client.get_manifest("a", "t")
    upstream.revoke_tokens()  # expired on the server's side while our cache still holds it
    await client.get_manifest("a", "t")
    assert len(upstream.token_requests) == 2
    assert [r.status for r in upstream.requests] == [401, 200, 401, 200]


async def test_concurrent_requests_share_one_token_request(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.add_manifest("a", "t", MANIFEST)
    await client.get_manifest("a", "t")
    upstream.clock.t += 10_000
    await asyncio.gather(*(client.get_manifest("a", "t") for _ in range(10)))
    assert len(upstream.token_requests) == 2


async def test_token_server_gets_the_configured_credentials(upstream: FakeUpstream) -> None:
    upstream.token_auth = True
    upstream.users = {"alice": "pw"}
    upstream.add_manifest("private/app", "v1", MANIFEST)
    good = make_client(upstream, credentials=Credentials("alice", "pw"))
    anonymous = make_client(upstream)
    try:
        await good.get_manifest("private/app", "v1")
        with pytest.raises(UpstreamDenied, match="token server refused"):
            await anonymous.get_manifest("private/app", "v1")
    finally:
        await good.close()
        await anonymous.close()


def identity(token: str) -> Credentials:
    """What ``docker login`` stores for an OAuth2 registry: a placeholder user + the token."""
    return Credentials("00000000-0000-0000-0000-000000000000", token, identity_token=token)


async def test_an_identity_token_gets_access_tokens_with_the_oauth2_post_flow(
    upstream: FakeUpstream,
) -> None:
    upstream.token_auth = upstream.oauth = True
    upstream.refresh_tokens = {"refresh-A"}
    upstream.add_manifest("team/app", "v1", MANIFEST)
    client = make_client(upstream, credentials=identity("refresh-A"))
    try:
        await client.get_manifest("team/app", "v1")
    finally:
        await client.close()
    assert upstream.token_requests == []  # never the GET flow
    (form,) = upstream.oauth_requests
    assert form == {"grant_type": "refresh_token", "refresh_token": "refresh-A",
                    "client_id": "p2preg", "service": "fake-registry",
                    "scope": "repository:team/app:pull"}  # fmt: skip


async def test_a_rotated_refresh_token_is_used_for_the_next_access_token(
    upstream: FakeUpstream,
) -> None:
    upstream.token_auth = upstream.oauth = upstream.rotate_refresh_tokens = True
    upstream.token_lifetime_s = 60
    upstream.refresh_tokens = {"refresh-A"}
    upstream.add_manifest("team/app", "v1", MANIFEST)
    client = make_client(upstream, credentials=identity("refresh-A"))
    try:
        await client.get_manifest("team/app", "v1")
        upstream.clock.t += 61  # the access token expired; "refresh-A" was rotated away
        await client.get_manifest("team/app", "v1")
    finally:
        await client.close()
    assert [f["refresh_token"] for f in upstream.oauth_requests] == ["refresh-A", "refresh-1"]


async def test_a_token_server_without_oauth2_gets_the_identity_token_as_basic_password(
    upstream: FakeUpstream,
) -> None:
    upstream.token_auth = True  # oauth stays off: POST /token answers 404
    upstream.users = {"00000000-0000-0000-0000-000000000000": "idt"}
    upstream.token_lifetime_s = 60
    upstream.add_manifest("team/app", "v1", MANIFEST)
    client = make_client(upstream, credentials=identity("idt"))
    try:
        await client.get_manifest("team/app", "v1")
        upstream.clock.t += 61
        await client.get_manifest("team/app", "v1")
    finally:
        await client.close()
    assert len(upstream.oauth_requests) == 1  # tried once, then remembered it is not spoken
    assert len(upstream.token_requests) == 2


async def test_an_expired_identity_token_is_a_clear_denial(upstream: FakeUpstream) -> None:
    upstream.token_auth = upstream.oauth = True
    upstream.refresh_tokens = {"other"}
    upstream.add_manifest("team/app", "v1", MANIFEST)
    client = make_client(upstream, credentials=identity("stale"))
    try:
        with pytest.raises(UpstreamDenied, match=r"refused the identity token .*invalid_grant"):
            await client.get_manifest("team/app", "v1")
    finally:
        await client.close()


async def test_basic_auth_upstream(upstream: FakeUpstream) -> None:
    upstream.basic_auth = True
    upstream.users = {"bob": "pw"}
    upstream.add_manifest("a", "t", MANIFEST)
    good = make_client(upstream, credentials=Credentials("bob", "pw"))
    wrong = make_client(upstream, credentials=Credentials("bob", "nope"))
    anonymous = make_client(upstream)
    try:
        await good.get_manifest("a", "t")
        await good.get_manifest("a", "t")
        assert [r.status for r in upstream.requests] == [401, 200, 200]
        with pytest.raises(UpstreamDenied, match="refused the configured credentials to a"):
            await wrong.get_manifest("a", "t")
        with pytest.raises(UpstreamDenied, match="no credentials"):
            await anonymous.get_manifest("a", "t")
    finally:
        for c in (good, wrong, anonymous):
            await c.close()


# -- redirects ------------------------------------------------------------------------------------


async def test_blob_redirect_to_another_host_does_not_leak_authorization(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.token_auth = True
    upstream.redirect_blobs = True
    data = random.Random(1).randbytes(300_000)
    digest = upstream.add_blob(data)
    async with await client.open_blob("a", parse_digest(digest)) as stream:
        body = b"".join([c async for c in stream.chunks()])
    assert body == data
    assert stream.size == len(data)
    to_registry = [r for r in upstream.requests if r.status == 307]
    assert to_registry and to_registry[0].headers["Authorization"].startswith("Bearer ")
    assert len(upstream.storage_requests) == 1
    assert "Authorization" not in upstream.storage_requests[0].headers


async def test_blob_resume_from_an_offset_uses_range(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    data = bytes(range(256)) * 1000
    digest = parse_digest(upstream.add_blob(data))
    async with await client.open_blob("a", digest, offset=1000) as stream:
        body = b"".join([c async for c in stream.chunks()])
    assert body == data[1000:]
    assert stream.status == 206
    assert stream.size == len(data)
    assert upstream.requests[-1].headers["Range"] == "bytes=1000-"


async def test_resume_from_an_upstream_that_ignores_range_skips_the_prefix() -> None:
    data = b"0123456789" * 100

    async def no_range(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/v2/a/blobs/{digest}", no_range)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = UpstreamClient(UpstreamConfig("x", f"http://127.0.0.1:{port}"),
                            clock=StepClock(), rng=random.Random(0))
    try:
        async with await client.open_blob("a", Digest.of_bytes(data), offset=995) as stream:
            body = b"".join([c async for c in stream.chunks()])
        assert body == data[995:]
    finally:
        await client.close()
        await runner.cleanup()


# -- retries and timeouts -------------------------------------------------------------------------


async def test_5xx_is_retried_with_backoff_then_succeeds(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.add_manifest("a", "t", MANIFEST)
    upstream.script["manifests/t"] = [(503, {}), (502, {})]
    got = await client.get_manifest("a", "t")
    assert got.body
    assert [r.status for r in upstream.requests] == [503, 502, 200]
    assert len(upstream.clock.slept) == 2
    assert upstream.clock.slept[1] <= 0.5  # base 0.25 s, doubling, full jitter


async def test_429_waits_at_least_retry_after(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.add_manifest("a", "t", MANIFEST)
    upstream.script["manifests/t"] = [(429, {"Retry-After": "3"})]
    await client.get_manifest("a", "t")
    assert upstream.clock.slept == [3.0]


async def test_a_long_retry_after_fails_at_once_naming_it(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.script["manifests/t"] = [(429, {"Retry-After": "3600"})]
    with pytest.raises(UpstreamUnavailable, match="retry after 3600 s"):
        await client.get_manifest("a", "t")
    assert upstream.clock.slept == []


async def test_persistent_5xx_gives_up_after_max_attempts(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.script["manifests/t"] = [(500, {})] * 10
    with pytest.raises(UpstreamUnavailable, match=r"answered 500 \(after 4 attempts\)"):
        await client.get_manifest("a", "t")
    assert len(upstream.requests) == 4


async def test_connection_refused_is_unavailable_and_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    clock = StepClock()
    client = UpstreamClient(UpstreamConfig("docker.io", f"http://127.0.0.1:{port}"),
                            clock=clock, rng=random.Random(0))
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get_manifest("a", "t")
    finally:
        await client.close()
    assert f"127.0.0.1:{port}" in info.value.reason
    assert len(clock.slept) == 3


async def test_a_stalled_body_fails_after_the_idle_timeout() -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/v2/a/blobs/{digest}", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    client = UpstreamClient(UpstreamConfig("x", f"http://127.0.0.1:{port}", idle_timeout_s=0.3),
                            clock=StepClock(), rng=random.Random(0))
    started = time.monotonic()
    try:
        async with await client.open_blob("a", Digest.of_bytes(b"")) as stream:
            with pytest.raises(UpstreamUnavailable, match="broke off"):
                async for _ in stream.chunks():
                    pass
    finally:
        release.set()
        await client.close()
        await runner.cleanup()
    assert time.monotonic() - started < 5


async def test_after_giving_up_requests_are_refused_at_once_then_one_probe_goes_out(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.add_manifest("a", "t", MANIFEST)
    upstream.script["manifests/t"] = [(503, {})] * 5
    with pytest.raises(UpstreamUnavailable):
        await client.get_manifest("a", "t")
    assert client.is_marked_down and len(upstream.requests) == 4
    with pytest.raises(UpstreamUnavailable, match="circuit breaker open"):
        await client.get_manifest("a", "t")  # the breaker is open: nothing is sent
    assert len(upstream.requests) == 4
    upstream.clock.t += client.config.breaker_open_s
    with pytest.raises(UpstreamUnavailable, match=r"\(after 1 attempts\)"):
        await client.get_manifest("a", "t")  # the probe: one try, no backoff schedule
    assert len(upstream.requests) == 5
    upstream.clock.t += client.config.breaker_open_s  # the period doubled: still open
    with pytest.raises(UpstreamUnavailable, match="circuit breaker open"):
        await client.get_manifest("a", "t")
    upstream.clock.t += client.config.breaker_open_s
    assert (await client.get_manifest("a", "t")).body  # the probe gets an answer: closed
    assert not client.is_marked_down
    upstream.script["manifests/t"] = [(503, {})]
    assert (await client.get_manifest("a", "t")).body  # retried as usual


async def test_no_retry_starts_beyond_the_retry_budget(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.script["manifests/t"] = [(503, {"Retry-After": "2"})] * 10
    with pytest.raises(UpstreamUnavailable, match=r"after 2 attempts in 2\.0 s"):
        await client.get_manifest("a", "t")
    assert upstream.clock.slept == [2.0]  # the next wait would end past the 4 s budget


async def test_a_silent_upstream_fails_within_the_connect_timeout_and_budget() -> None:
    # A listener whose accept queue is full drops new SYNs: connecting hangs like a black hole.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.05)
    config = UpstreamConfig("docker.io", f"http://127.0.0.1:{port}", connect_timeout_s=0.3,
                            retry_budget_s=1.0)
    client = UpstreamClient(config, rng=random.Random(0))  # the real clock: real timeouts
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamUnavailable, match="timed out"):
            await client.get_manifest("a", "t")
    finally:
        await client.close()
        for s in [*fillers, listener]:
            s.close()
    assert time.monotonic() - started < 1.5


# -- deadlines against a silent upstream (accepts TCP, never answers) ------------------------------


async def test_a_silent_upstream_fails_after_the_first_byte_deadline_not_the_idle_timeout(
) -> None:
    async with SilentServer() as silent:
        config = UpstreamConfig("docker.io", silent.url, first_byte_timeout_s=0.4,
                                idle_timeout_s=30.0, retry_budget_s=0.1)
        client = UpstreamClient(config, rng=random.Random(0))  # the real clock: real timeouts
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamUnavailable, match="timed out"):
                await client.head_manifest("a", "t")
            took = time.monotonic() - started
            # the breaker is open: the next request is refused without connecting
            again = time.monotonic()
            with pytest.raises(UpstreamUnavailable, match=r"timed out.*circuit breaker open"):
                await client.get_manifest("a", "t")
            assert time.monotonic() - again < 0.1
        finally:
            await client.close()
        assert silent.connections == 1
    assert 0.4 <= took < 2.0


async def test_a_slow_first_byte_within_the_deadline_is_waited_for() -> None:
    app_delay = 0.2

    async def late(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(app_delay)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/v2/a/manifests/t", late)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    client = UpstreamClient(UpstreamConfig("x", f"http://127.0.0.1:{port}",
                                           first_byte_timeout_s=2.0), rng=random.Random(0))
    try:
        with pytest.raises(UpstreamNotFound):
            await client.head_manifest("a", "t")
    finally:
        await client.close()
        await runner.cleanup()
    assert not client.is_marked_down  # an answer, however slow, is not an outage


def test_upstream_toml_takes_the_three_deadlines_and_breaker_periods() -> None:
    (entry,) = upstreams_from_toml({"upstream": [{
        "registry": "docker.io", "url": "https://registry-1.docker.io",
        "connect_timeout_s": 1, "first_byte_timeout_s": 3, "idle_timeout_s": 20,
        "breaker_open_s": 2, "breaker_max_open_s": 30,
    }]})
    assert (entry.connect_timeout_s, entry.first_byte_timeout_s, entry.idle_timeout_s,
            entry.breaker_open_s, entry.breaker_max_open_s) == (1, 3, 20, 2, 30)
    (default,) = build_upstreams(["docker.io=https://registry-1.docker.io"], timeout_s=30.0)
    assert (default.connect_timeout_s, default.first_byte_timeout_s,
            default.idle_timeout_s) == (2.0, 5.0, 30.0)
