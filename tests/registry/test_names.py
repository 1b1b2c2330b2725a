"""Repository names and digests in URLs: the grammar is enforced on every endpoint."""

from __future__ import annotations

import pytest

from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, digest_of, push_blob, push_image

DIGEST = digest_of(b"data")
UUID = "0f1e2d3c-0000-4000-8000-000000000000"

BAD_NAMES = [
    "Upper/case",
    "lib/App",
    "a" * 256,
    "-lead",
    "trail-",
    "lib//double",
    "lib/.dot",
    "lib/a..b",
    "lib/%2e%2e/etc",
    "lib/..%2fetc",
    "lib/a%00b",
    "lib/sp%20ace",
    "lib/a:b",
    "lib/_x",
]


def endpoints(name: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("HEAD", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("DELETE", f"/v2/{name}/manifests/latest"),
        ("GET", f"/v2/{name}/blobs/{DIGEST}"),
        ("DELETE", f"/v2/{name}/blobs/{DIGEST}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/blobs/uploads/{UUID}"),
        ("PATCH", f"/v2/{name}/blobs/uploads/{UUID}"),
        ("PUT", f"/v2/{name}/blobs/uploads/{UUID}?digest={DIGEST}"),
        ("DELETE", f"/v2/{name}/blobs/uploads/{UUID}"),
        ("GET", f"/v2/{name}/referrers/{DIGEST}"),
    ]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_malformed_name_is_name_invalid_everywhere(
    registry: RegistryNode, name: str
) -> None:
    for method, path in endpoints(name):
        response = await registry.request(method, path, raw=True, data=b"")
        assert_oci_error(response, 400, "NAME_INVALID")


@pytest.mark.parametrize("path", ["/v2/../v2/x/tags/list", "/v2/lib/../../etc/passwd/blobs/x"])
async def test_dot_segments_never_reach_the_store(registry: RegistryNode, path: str) -> None:
    response = await registry.request("GET", path, raw=True)
    assert response.status in (400, 404)
    assert response.json()["errors"][0]["code"] in ("NAME_INVALID", "UNSUPPORTED", "DIGEST_INVALID")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256:",
        ":" + "a" * 64,
        "sha256:..%2f..%2f" + "a" * 58,
    ],
)
async def test_a_malformed_digest_is_digest_invalid_everywhere(
    registry: RegistryNode, digest: str
) -> None:
    for method, path in (
        ("GET", f"/v2/lib/app/blobs/{digest}"),
        ("HEAD", f"/v2/lib/app/blobs/{digest}"),
        ("DELETE", f"/v2/lib/app/blobs/{digest}"),
        ("GET", f"/v2/lib/app/manifests/{digest}"),
        ("POST", f"/v2/lib/app/blobs/uploads/?digest={digest}"),
        ("GET", f"/v2/lib/app/referrers/{digest}"),
    ):
        response = await registry.request(method, path, raw=True)
        assert_oci_error(response, 400, "DIGEST_INVALID")


async def test_the_longest_valid_name_works(registry: RegistryNode) -> None:
    name = "/".join(["a" * 50] * 5)  # 254 characters
    name += "b"
    assert len(name) == 255  # the limit is "less than 256"
    digest = await push_blob(registry, name, b"data")
    assert (await registry.request("GET", f"/v2/{name}/blobs/{digest}")).body == b"data"


@pytest.mark.parametrize(
    "name",
    [
        "blobs",
        "manifests",
        "lib/blobs/uploads",
        "lib/manifests/x",
        "tags/list",
        "a/referrers/b",
        "x__y/a-b.c/d---e",
    ],
)
async def test_names_containing_endpoint_words_route_correctly(
    registry: RegistryNode, name: str
) -> None:
    digest, body = await push_image(registry, name, "v1")
    assert (await registry.request("GET", f"/v2/{name}/manifests/v1")).body == body
    tags = await registry.request("GET", f"/v2/{name}/tags/list")
    assert tags.json() == {"name": name, "tags": ["v1"]}
    location = (await registry.request("POST", f"/v2/{name}/blobs/uploads/")).headers["Location"]
    assert (await registry.request("GET", location)).status == 204
    response = await registry.request("GET", f"/v2/{name}/referrers/{digest}")
    assert response.status == 200
    catalog = await registry.request("GET", "/v2/_catalog")
    assert name in catalog.json()["repositories"]
