"""Manifests: push by tag and digest, validation, pull with negotiation, HEAD, delete."""

from __future__ import annotations

import json

import pytest

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest
from tests.registry.conftest import RegistryFactory, RegistryNode
from tests.registry.helpers import (
    assert_created_with_subject,
    assert_oci_error,
    digest_of,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
)

CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYERS = [b"first layer", b"second layer"]


async def push_parts(node: RegistryNode, name: str = "lib/app") -> None:
    for blob in [CONFIG, *LAYERS]:
        await push_blob(node, name, blob)


async def test_put_by_tag_answers_201_with_location_and_digest(registry: RegistryNode) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS)
    response = await put_manifest(registry, "lib/app", "v1", body)
    assert response.status == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest_of(body)
    assert response.headers["Location"] == f"/v2/lib/app/manifests/{digest_of(body)}"
    assert "OCI-Subject" not in response.headers


@pytest.mark.parametrize("reference", ["v1", "digest"])
async def test_get_returns_the_exact_bytes_with_type_digest_etag_and_length(
    registry: RegistryNode, reference: str
) -> None:
    digest, body = await push_image(registry, "lib/app", "v1")
    ref = digest if reference == "digest" else "v1"
    response = await registry.request("GET", f"/v2/lib/app/manifests/{ref}")
    assert response.status == 200
    assert response.body == body
    assert response.content_type == mediatypes.OCI_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Content-Length"] == str(len(body))


async def test_head_answers_the_headers_without_the_body(registry: RegistryNode) -> None:
    digest, body = await push_image(registry, "lib/app", "v1")
    response = await registry.request("HEAD", "/v2/lib/app/manifests/v1")
    assert response.status == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == str(len(body))
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content_type == mediatypes.OCI_MANIFEST


async def test_put_by_digest_stores_an_untagged_manifest(registry: RegistryNode) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS)
    digest = digest_of(body)
    assert (await put_manifest(registry, "lib/app", digest, body)).status == 201
    assert (await registry.request("GET", f"/v2/lib/app/manifests/{digest}")).body == body
    tags = await registry.request("GET", "/v2/lib/app/tags/list")
    assert tags.json() == {"name": "lib/app", "tags": []}


async def test_put_by_a_sha512_digest_is_checked_with_sha512(registry: RegistryNode) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS)
    digest = str(Digest.of_bytes(body, "sha512"))
    response = await put_manifest(registry, "lib/app", digest, body)
    assert response.status == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest


async def test_a_digest_in_the_url_that_does_not_match_the_body_is_digest_invalid(
    registry: RegistryNode,
) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS)
    response = await put_manifest(registry, "lib/app", digest_of(b"other"), body)
    assert_oci_error(response, 400, "DIGEST_INVALID")


async def test_a_manifest_referencing_an_unknown_layer_is_manifest_blob_unknown(
    registry: RegistryNode,
) -> None:
    await push_blob(registry, "lib/app", CONFIG)
    await push_blob(registry, "lib/app", LAYERS[0])
    response = await put_manifest(registry, "lib/app", "v1", image_manifest(CONFIG, LAYERS))
    error = assert_oci_error(response, 404, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": digest_of(LAYERS[1])}


async def test_blobs_must_be_linked_in_the_same_repository(registry: RegistryNode) -> None:
    await push_parts(registry, "lib/elsewhere")
    response = await put_manifest(registry, "lib/app", "v1", image_manifest(CONFIG, LAYERS))
    assert_oci_error(response, 404, "MANIFEST_BLOB_UNKNOWN")


async def test_an_unknown_config_is_manifest_blob_unknown(registry: RegistryNode) -> None:
    for blob in LAYERS:
        await push_blob(registry, "lib/app", blob)
    response = await put_manifest(registry, "lib/app", "v1", image_manifest(CONFIG, LAYERS))
    error = assert_oci_error(response, 404, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": digest_of(CONFIG)}


async def test_foreign_layers_need_not_be_pushed(registry: RegistryNode) -> None:
    await push_blob(registry, "lib/win", CONFIG)
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": digest_of(b"windows base"),
        "size": 12,
        "urls": ["https://example.invalid/base"],
    }
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": {
                "mediaType": mediatypes.DOCKER_CONFIG,
                "digest": digest_of(CONFIG),
                "size": len(CONFIG),
            },
            "layers": [foreign],
        }
    ).encode()
    response = await put_manifest(registry, "lib/win", "v1", body, mediatypes.DOCKER_MANIFEST)
    assert response.status == 201, response.text


async def test_an_index_needs_its_child_manifests_in_the_repository(
    registry: RegistryNode,
) -> None:
    _, child = await push_image(registry, "lib/app", None)
    missing_child = image_manifest(b"{}", [])
    refused = await put_manifest(
        registry, "lib/app", "multi", index_manifest([child, missing_child]), mediatypes.OCI_INDEX
    )
    error = assert_oci_error(refused, 404, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": digest_of(missing_child)}
    body = index_manifest([child])
    accepted = await put_manifest(registry, "lib/app", "multi", body, mediatypes.OCI_INDEX)
    assert accepted.status == 201
    pulled = await registry.request("GET", "/v2/lib/app/manifests/multi")
    assert pulled.content_type == mediatypes.OCI_INDEX
    assert pulled.body == body


async def test_docker_schema2_manifests_and_lists_round_trip(registry: RegistryNode) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS, media_type=mediatypes.DOCKER_MANIFEST)
    assert (
        await put_manifest(registry, "lib/app", "d", body, mediatypes.DOCKER_MANIFEST)
    ).status == 201
    listing = index_manifest([body], media_type=mediatypes.DOCKER_MANIFEST_LIST)
    response = await put_manifest(
        registry, "lib/app", "dl", listing, mediatypes.DOCKER_MANIFEST_LIST
    )
    assert response.status == 201, response.text
    pulled = await registry.request(
        "GET", "/v2/lib/app/manifests/dl", headers={"Accept": mediatypes.DOCKER_MANIFEST_LIST}
    )
    assert pulled.content_type == mediatypes.DOCKER_MANIFEST_LIST
    assert pulled.body == listing


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", mediatypes.OCI_MANIFEST),
        (b"[]", mediatypes.OCI_MANIFEST),
        (b'{"schemaVersion": 1}', mediatypes.OCI_MANIFEST),
        (b"", mediatypes.OCI_MANIFEST),
        (b'{"schemaVersion": 2, "config": 5}', mediatypes.OCI_MANIFEST),
        (b'{"schemaVersion": 2, "config": {}}', "text/plain"),
    ],
)
async def test_invalid_manifests_are_manifest_invalid(
    registry: RegistryNode, body: bytes, content_type: str
) -> None:
    response = await put_manifest(registry, "lib/app", "v1", body, content_type)
    assert_oci_error(response, 400, "MANIFEST_INVALID")


async def test_a_media_type_that_contradicts_content_type_is_manifest_invalid(
    registry: RegistryNode,
) -> None:
    await push_parts(registry)
    body = image_manifest(CONFIG, LAYERS)  # declares the OCI manifest type
    response = await put_manifest(registry, "lib/app", "v1", body, mediatypes.DOCKER_MANIFEST)
    error = assert_oci_error(response, 400, "MANIFEST_INVALID")
    assert "does not match" in error["message"]


async def test_an_oversize_manifest_is_413_manifest_invalid(
    registry_factory: RegistryFactory,
) -> None:
    node = await registry_factory(max_manifest_bytes=1024)
    await push_parts(node)
    body = image_manifest(CONFIG, LAYERS, annotations={"pad": "x" * 2000})
    response = await put_manifest(node, "lib/app", "v1", body)
    assert_oci_error(response, 413, "MANIFEST_INVALID")

    async def streamed() -> object:
        yield body  # no Content-Length: the limit is enforced while reading

    response = await node.request(
        "PUT",
        "/v2/lib/app/manifests/v1",
        data=streamed(),
        headers={"Content-Type": mediatypes.OCI_MANIFEST},
    )
    assert_oci_error(response, 413, "MANIFEST_INVALID")
    assert_oci_error(await node.request("GET", "/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_the_default_limit_accepts_a_manifest_just_under_4_mib(
    registry: RegistryNode,
) -> None:
    await push_parts(registry)
    small = image_manifest(CONFIG, LAYERS, annotations={"pad": ""})
    body = image_manifest(CONFIG, LAYERS, annotations={"pad": "x" * (4 * 1024 * 1024 - len(small))})
    assert len(body) == 4 * 1024 * 1024
    assert (await put_manifest(registry, "lib/app", "big", body)).status == 201
    too_big = image_manifest(
        CONFIG, LAYERS, annotations={"pad": "x" * (4 * 1024 * 1024 - len(small) + 1)}
    )
    assert_oci_error(
        await put_manifest(registry, "lib/app", "big", too_big), 413, "MANIFEST_INVALID"
    )


async def test_a_subject_is_echoed_in_oci_subject(registry: RegistryNode) -> None:
    subject_digest, subject = await push_image(registry, "lib/app", "v1")
    body = image_manifest(
        CONFIG,
        LAYERS,
        subject={
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": subject_digest,
            "size": len(subject),
        },
    )
    await push_parts(registry)
    response = await put_manifest(registry, "lib/app", digest_of(body), body)
    assert_created_with_subject(response, subject_digest)


async def test_all_accept_lines_are_read_and_the_stored_type_is_always_served(
    registry: RegistryNode,
) -> None:
    _, body = await push_image(registry, "lib/app", "v1")
    containerd = f"{mediatypes.DOCKER_MANIFEST}, {mediatypes.OCI_MANIFEST}, */*"
    docker = [("Accept", mediatypes.DOCKER_MANIFEST), ("Accept", mediatypes.OCI_MANIFEST)]
    only_docker = {"Accept": mediatypes.DOCKER_MANIFEST}
    for headers in ({"Accept": containerd}, docker, only_docker, {}):
        response = await registry.request("GET", "/v2/lib/app/manifests/v1", headers=headers)
        assert response.status == 200
        assert response.content_type == mediatypes.OCI_MANIFEST
        assert response.body == body


async def test_moving_a_tag_points_it_at_the_new_manifest(registry: RegistryNode) -> None:
    await push_image(registry, "lib/app", "v1", seed=b"a")
    digest_b, body_b = await push_image(registry, "lib/app", "v1", seed=b"b")
    response = await registry.request("GET", "/v2/lib/app/manifests/v1")
    assert response.headers["Docker-Content-Digest"] == digest_b
    assert response.body == body_b


async def test_unknown_manifests_and_repositories(registry: RegistryNode) -> None:
    assert_oci_error(await registry.request("GET", "/v2/lib/app/manifests/v1"), 404, "NAME_UNKNOWN")
    await push_image(registry, "lib/app", "v1")
    for ref in ("v2", digest_of(b"nothing")):
        for method in ("GET", "HEAD"):
            response = await registry.request(method, f"/v2/lib/app/manifests/{ref}")
            assert_oci_error(response, 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    ("reference", "code"),
    [
        ("sha256:abc", "DIGEST_INVALID"),
        ("sha256:" + "A" * 64, "DIGEST_INVALID"),
        ("md5:" + "a" * 32, "DIGEST_INVALID"),
        ("-tag", "TAG_INVALID"),
        ("t" * 129, "TAG_INVALID"),
        (".hidden", "TAG_INVALID"),
    ],
)
async def test_malformed_references_are_400_on_put_and_delete(
    registry: RegistryNode, reference: str, code: str
) -> None:
    for method in ("PUT", "DELETE"):
        response = await registry.request(method, f"/v2/lib/app/manifests/{reference}", data=b"{}")
        assert_oci_error(response, 400, code)


@pytest.mark.parametrize(
    "reference",
    [".INVALID_MANIFEST_NAME", "-tag", "t" * 129, ".hidden", "a b", "t%C3%A9"],
)
async def test_get_and_head_of_a_malformed_reference_are_404_manifest_unknown(
    registry: RegistryNode, reference: str
) -> None:
    """The conformance suite GETs and HEADs ``.INVALID_MANIFEST_NAME`` and wants 404."""
    await push_image(registry, "lib/app", "v1")
    response = await registry.request("GET", f"/v2/lib/app/manifests/{reference}")
    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
    head = await registry.request("HEAD", f"/v2/lib/app/manifests/{reference}")
    assert head.status == 404
    assert head.body == b""


async def test_delete_by_tag_removes_only_the_tag(registry: RegistryNode) -> None:
    digest, _ = await push_image(registry, "lib/app", "v1")
    response = await registry.request("DELETE", "/v2/lib/app/manifests/v1")
    assert response.status == 202
    assert_oci_error(
        await registry.request("GET", "/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN"
    )
    assert (await registry.request("GET", f"/v2/lib/app/manifests/{digest}")).status == 200
    assert_oci_error(
        await registry.request("DELETE", "/v2/lib/app/manifests/v1"), 404, "MANIFEST_UNKNOWN"
    )


async def test_delete_by_digest_removes_the_manifest_and_its_tags(registry: RegistryNode) -> None:
    digest, _ = await push_image(registry, "lib/app", "v1")
    response = await registry.request("DELETE", f"/v2/lib/app/manifests/{digest}")
    assert response.status == 202
    for ref in ("v1", digest):
        assert_oci_error(
            await registry.request("GET", f"/v2/lib/app/manifests/{ref}"), 404, "MANIFEST_UNKNOWN"
        )
    assert_oci_error(
        await registry.request("DELETE", f"/v2/lib/app/manifests/{digest}"), 404, "MANIFEST_UNKNOWN"
    )


async def test_delete_in_an_unknown_repository_is_name_unknown(registry: RegistryNode) -> None:
    response = await registry.request("DELETE", f"/v2/lib/none/manifests/{digest_of(b'x')}")
    assert_oci_error(response, 404, "NAME_UNKNOWN")
