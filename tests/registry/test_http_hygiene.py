"""HTTP hygiene of the /v2 app: upload session caps, OCI JSON on every error, exact headers."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from p2preg.oci import mediatypes
from p2preg.registry.errors import error_middleware
from p2preg.registry.httpserver import RegistryRunner
from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, digest_of, push_image

UPLOADS = "/v2/lib/app/blobs/uploads/"


# -- upload session caps ---------------------------------------------------------------------------


async def test_a_client_over_its_session_cap_gets_429_toomanyrequests(
    registry: RegistryNode,
) -> None:
    registry.ctx.uploads.max_sessions_per_owner = 2
    first = await registry.request("POST", UPLOADS)
    second = await registry.request("POST", UPLOADS)
    assert (first.status, second.status) == (202, 202)
    refused = await registry.request("POST", UPLOADS)
    error = assert_oci_error(refused, 429, "TOOMANYREQUESTS")
    assert error["detail"] == {"open": 2, "limit": 2}
    assert int(refused.headers["Retry-After"]) > 0
    assert registry.ctx.uploads.open_sessions == 2
    # Finishing or cancelling one frees its place.
    assert (await registry.request("DELETE", first.headers["Location"])).status == 204
    assert (await registry.request("POST", UPLOADS)).status == 202
    data = b"finished"
    done = await registry.request(
        "PUT", f"{second.headers['Location']}?digest={digest_of(data)}", data=data
    )
    assert done.status == 201
    assert (await registry.request("POST", UPLOADS)).status == 202


async def test_the_node_cap_holds_for_every_client_and_monolithic_pushes_are_not_sessions(
    registry: RegistryNode,
) -> None:
    registry.ctx.uploads.max_sessions = 3
    for _ in range(3):
        assert (await registry.request("POST", UPLOADS)).status == 202
    assert_oci_error(await registry.request("POST", UPLOADS), 429, "TOOMANYREQUESTS")
    data = b"one request, no session"
    monolithic = await registry.request("POST", f"{UPLOADS}?digest={digest_of(data)}", data=data)
    assert monolithic.status == 201
    assert registry.ctx.uploads.open_sessions == 3


async def test_sessions_are_counted_per_client_address(registry: RegistryNode) -> None:
    uploads = registry.ctx.uploads
    uploads.max_sessions_per_owner = 1
    assert (await registry.request("POST", UPLOADS)).status == 202
    assert uploads.sessions_of("addr:127.0.0.1") == 1
    # Another client (another owner) still gets a session.
    record = uploads.create("lib/app", owner="addr:10.0.0.9")
    assert uploads.sessions_of("addr:10.0.0.9") == 1
    uploads.cancel("lib/app", record.uuid)
    assert uploads.sessions_of("addr:10.0.0.9") == 0


async def test_expired_sessions_free_their_places(registry: RegistryNode) -> None:
    uploads = registry.ctx.uploads
    uploads.max_sessions_per_owner = 1
    assert (await registry.request("POST", UPLOADS)).status == 202
    registry.clock.advance(3600)
    assert uploads.expire(60) == 1
    assert uploads.open_sessions == 0
    assert (await registry.request("POST", UPLOADS)).status == 202


# -- 416s carry the size ---------------------------------------------------------------------------


async def test_an_out_of_order_chunk_416_carries_content_range_and_range(
    registry: RegistryNode,
) -> None:
    location = (await registry.request("POST", UPLOADS)).headers["Location"]
    await registry.request("PATCH", location, data=b"0123456789", headers={"Content-Range": "0-9"})
    response = await registry.request(
        "PATCH", location, data=b"abc", headers={"Content-Range": "20-22"}
    )
    assert_oci_error(response, 416, "RANGE_INVALID")
    assert response.headers["Content-Range"] == "bytes */10"
    assert response.headers["Range"] == "0-9"
    assert response.headers["Location"] == location


# -- exact Content-Type of the referrers index -----------------------------------------------------


async def test_the_referrers_content_type_has_no_parameters(registry: RegistryNode) -> None:
    digest, _ = await push_image(registry, "lib/app", "v1")
    for query in ("", "?artifactType=application/x.sig"):
        response = await registry.request("GET", f"/v2/lib/app/referrers/{digest}{query}")
        assert response.status == 200
        assert response.headers["Content-Type"] == mediatypes.OCI_INDEX
        assert response.json()["mediaType"] == mediatypes.OCI_INDEX


# -- OCI JSON on every error status ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/"),
        ("DELETE", "/v2/"),
        ("PUT", "/v2/_catalog"),
        ("DELETE", "/v2/lib/app/tags/list"),
        ("POST", "/v2/lib/app/manifests/v1"),
        ("PATCH", "/v2/lib/app/manifests/v1"),
        ("POST", f"/v2/lib/app/blobs/{digest_of(b'x')}"),
        ("PUT", f"/v2/lib/app/blobs/{digest_of(b'x')}"),
        ("DELETE", f"/v2/lib/app/referrers/{digest_of(b'x')}"),
        ("GET", UPLOADS),
        ("OPTIONS", "/v2/"),
    ],
)
async def test_a_wrong_method_is_405_oci_json_with_allow(
    registry: RegistryNode, method: str, path: str
) -> None:
    response = await registry.request(method, path)
    assert_oci_error(response, 405, "UNSUPPORTED")
    assert response.headers["Allow"]
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("path", ["/", "/v1/", "/v3/x", "/favicon.ico", "/v2x"])
async def test_unknown_paths_outside_v2_are_404_oci_json(registry: RegistryNode, path: str) -> None:
    assert_oci_error(await registry.request("GET", path), 404, "UNSUPPORTED")


async def test_aiohttps_own_413_is_oci_json() -> None:
    """A handler that reads a body whole over ``client_max_size`` gets aiohttp's 413: mapped."""

    async def read_all(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()

    app = web.Application(middlewares=[error_middleware], client_max_size=16)
    app.router.add_post("/v2/x", read_all)
    runner = RegistryRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v2/x", data=b"y" * 100) as response,
        ):
            assert response.status == 413
            assert response.content_type == "application/json"
            assert json.loads(await response.read())["errors"][0]["code"] == "SIZE_INVALID"
    finally:
        await runner.cleanup()
