"""auth_middleware over HTTP: exact 401/403 answers, anonymous reads, exempt paths, the user log."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from p2preg.clock import FakeClock
from p2preg.registry.auth import AuthPolicy, auth_middleware
from p2preg.registry.htpasswd import Htpasswd
from p2preg.registry.metrics import RegistryMetrics
from p2preg.registry.observability import Observability
from tests.auth.conftest import REALM, USERS, basic
from tests.observability.tinyapp import DIGEST, AccessLines, TinyRegistry, serving

BLOB_PATH = f"/v2/library/busybox/blobs/{DIGEST}"
CHALLENGE_HEADERS = {
    "WWW-Authenticate": f'Basic realm="{REALM}"',
    "Docker-Distribution-API-Version": "registry/2.0",
    "Content-Type": "application/json",
}


def error_body(code: str, message: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": message}]}


@pytest.fixture
def blob_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(b"layer bytes")
    return path


@pytest.fixture
def obs() -> Observability:
    return Observability(RegistryMetrics(), wall_clock=FakeClock(0.0))


def app_for(policy: AuthPolicy, blob_file: Path, obs: Observability) -> aiohttp.web.Application:
    return TinyRegistry(blob_file).app([auth_middleware(policy)], obs=obs)


async def test_the_ping_without_credentials_gets_the_exact_challenge(
    htpasswd_path: Path, blob_file: Path, obs: Observability, access_lines: AccessLines
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    async with (
        serving(app_for(policy, blob_file, obs)) as base,
        aiohttp.ClientSession() as client,
        client.get(f"{base}/v2/") as response,
    ):
        assert response.status == 401
        for name, value in CHALLENGE_HEADERS.items():
            assert response.headers[name] == value
        assert await response.json() == error_body("UNAUTHORIZED", "authentication required")
    (line,) = await access_lines.wait_for(1)
    assert (line["status"], line["user"]) == (401, None)
    count = obs.metrics.registry.get_sample_value(
        "p2preg_http_requests_total", {"route": "/v2/", "method": "GET", "status": "401"}
    )
    assert count == 1


async def test_a_head_request_gets_the_challenge_headers_without_a_body(
    htpasswd_path: Path, blob_file: Path, obs: Observability
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    async with (
        serving(app_for(policy, blob_file, obs)) as base,
        aiohttp.ClientSession() as client,
        client.head(base + BLOB_PATH) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert await response.read() == b""


async def test_valid_credentials_pass_and_the_user_is_logged(
    htpasswd_path: Path, blob_file: Path, obs: Observability, access_lines: AccessLines
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    async with serving(app_for(policy, blob_file, obs)) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v2/", headers=basic("alice", USERS["alice"])) as response:
            assert response.status == 200
        put_headers = basic("bob", USERS["bob"])
        async with client.put(
            f"{base}/v2/x/manifests/v1", data=b"{}", headers=put_headers
        ) as response:
            assert response.status == 201
    first, second = await access_lines.wait_for(2)
    assert first["user"] == "alice"
    assert second["user"] == "bob"
    assert all(USERS["alice"] not in m and USERS["bob"] not in m for m in access_lines.messages)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (basic("alice", "not her password"), "invalid username or password"),
        (basic("mallory", "anything"), "invalid username or password"),
        ({"Authorization": "Bearer eyJhbGciOi.x.y"}, "only Basic authorization is supported"),
        ({"Authorization": "Basic %%%"}, "Basic credentials are not valid base64 UTF-8"),
    ],
)
async def test_bad_credentials_get_a_challenge_and_never_fall_back_to_anonymous(
    htpasswd_path: Path, blob_file: Path, obs: Observability, headers: dict[str, str], message: str
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), anonymous_read=True, realm=REALM)
    async with (
        serving(app_for(policy, blob_file, obs)) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH, headers=headers) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert await response.json() == error_body("UNAUTHORIZED", message)


async def test_anonymous_read_serves_pulls_and_challenges_the_ping_and_writes(
    htpasswd_path: Path, blob_file: Path, obs: Observability
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), anonymous_read=True, realm=REALM)
    async with serving(app_for(policy, blob_file, obs)) as base, aiohttp.ClientSession() as client:
        async with client.get(base + BLOB_PATH) as response:
            assert (response.status, await response.read()) == (200, b"layer bytes")
        empty = {"Authorization": "Basic Og=="}  # podman/skopeo without a login
        async with client.get(base + BLOB_PATH, headers=empty) as response:
            assert response.status == 200
        async with client.get(f"{base}/v2/") as response:
            assert response.status == 401
        writes = [
            ("PUT", f"{base}/v2/x/manifests/v1"),
            ("POST", f"{base}/v2/x/blobs/uploads/"),
            ("DELETE", base + BLOB_PATH),
        ]
        for method, url in writes:
            async with client.request(method, url, data=b"{}") as response:
                assert response.status == 401, (method, url)
                assert response.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
                assert await response.json() == error_body(
                    "UNAUTHORIZED", "authentication required"
                )
        headers = basic("alice", USERS["alice"])
        async with client.put(f"{base}/v2/x/manifests/v1", data=b"{}", headers=headers) as response:
            assert response.status == 201


async def test_a_registry_without_users_is_read_only_and_says_denied(
    blob_file: Path, obs: Observability
) -> None:
    policy = AuthPolicy(None, anonymous_read=True, realm=REALM)
    async with serving(app_for(policy, blob_file, obs)) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v2/") as response:
            assert response.status == 200
        async with client.put(f"{base}/v2/x/manifests/v1", data=b"{}") as response:
            assert response.status == 403
            assert "WWW-Authenticate" not in response.headers
            assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            assert await response.json() == error_body("DENIED", "this registry is read-only")


async def test_metrics_healthz_and_p2p_are_not_behind_registry_auth(
    htpasswd_path: Path, blob_file: Path, obs: Observability
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    async with serving(app_for(policy, blob_file, obs)) as base, aiohttp.ClientSession() as client:
        async with client.get(f"{base}/metrics") as response:
            assert response.status == 200
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with client.get(f"{base}/p2p/v1/blobs/{DIGEST}") as response:
            assert response.status == 404  # reached the router: no such route in this app
        async with client.get(f"{base}/metricsx") as response:
            assert response.status == 401


async def test_a_v2_route_is_never_exempt_whatever_the_exempt_paths_say(
    htpasswd_path: Path, blob_file: Path, obs: Observability
) -> None:
    policy = AuthPolicy(
        Htpasswd(htpasswd_path), realm=REALM, exempt_paths=("/metrics", "/v2/library/")
    )
    async with (
        serving(app_for(policy, blob_file, obs)) as base,
        aiohttp.ClientSession() as client,
        client.get(base + BLOB_PATH) as response,
    ):
        assert response.status == 401
