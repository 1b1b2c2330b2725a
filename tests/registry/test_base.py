"""The /v2 base: version check, unknown routes, wrong methods, crashes and HEAD errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from p2preg.oci.digest import Digest
from p2preg.registry.content import BlobContent, ManifestContent
from p2preg.registry.ranges import RangeSpec
from tests.registry.conftest import RegistryFactory, RegistryNode
from tests.registry.helpers import assert_oci_error


async def test_version_check_answers_200_with_the_api_version_header(
    registry: RegistryNode,
) -> None:
    for path in ("/v2/", "/v2"):
        response = await registry.request("GET", path)
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert response.json() == {}
    head = await registry.request("HEAD", "/v2/")
    assert head.status == 200
    assert head.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    "path", ["/v2/foo", "/v2/foo/bar", "/v2/foo/tags", "/v2/foo/blobs", "/v2/foo/unknown/x"]
)
async def test_unknown_routes_under_v2_answer_404_oci_json(
    registry: RegistryNode, path: str
) -> None:
    assert_oci_error(await registry.request("GET", path), 404, "UNSUPPORTED")


async def test_a_wrong_method_answers_405_unsupported_with_allow(registry: RegistryNode) -> None:
    response = await registry.request("POST", "/v2/foo/tags/list")
    assert_oci_error(response, 405, "UNSUPPORTED")
    assert "GET" in response.headers["Allow"]


async def test_head_errors_carry_no_body(registry: RegistryNode) -> None:
    response = await registry.request("HEAD", "/v2/foo/manifests/latest")
    assert_oci_error(response, 404, "NAME_UNKNOWN")
    assert response.headers.get("Content-Length") in (None, "0")


class ExplodingSource:
    """A content source whose every read fails with an unexpected exception."""

    async def manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestContent:
        raise RuntimeError("secret internal detail")

    async def blob(
        self, repo: str, digest: Digest, byte_range: RangeSpec | None, *, want_body: bool = True
    ) -> BlobContent:
        raise RuntimeError("secret internal detail")


async def test_a_handler_crash_answers_500_json_logs_it_and_the_server_keeps_serving(
    registry_factory: RegistryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    node = await registry_factory(content=ExplodingSource())
    with caplog.at_level(logging.ERROR, logger="p2preg.registry.errors"):
        response = await node.request("GET", "/v2/foo/manifests/latest")
    error = assert_oci_error(response, 500, "UNKNOWN")
    assert "secret" not in str(error)
    assert any("secret internal detail" in (r.exc_text or "") for r in caplog.records)
    assert (await node.request("GET", "/v2/")).status == 200
