"""Test helpers for the /v2 suites: OCI error assertions, pushing blobs, building manifests."""

from __future__ import annotations

import json
from typing import Any

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest
from tests.registry.conftest import RegistryNode, Reply


def digest_of(data: bytes) -> str:
    return str(Digest.of_bytes(data))


def assert_oci_error(response: Reply, status: int, code: str) -> dict[str, Any]:
    """Assert ``status`` and a well-formed OCI error body whose first code is ``code``."""
    body = response.body
    assert response.status == status, (response.status, body)
    if response.method == "HEAD":
        assert body == b""
        return {}
    assert response.content_type == "application/json"
    document = json.loads(body)
    errors = document["errors"]
    assert isinstance(errors, list) and errors
    assert errors[0]["code"] == code, document
    assert isinstance(errors[0]["message"], str) and errors[0]["message"]
    return dict(errors[0])


def assert_created_with_subject(response: Reply, subject: str) -> None:
    """A manifest PUT answered 201 and named its ``subject`` in ``OCI-Subject``."""
    assert response.status == 201, response.text
    assert response.headers["OCI-Subject"] == subject


async def push_blob(node: RegistryNode, name: str, data: bytes) -> str:
    """Push ``data`` monolithically (single POST) and return its digest."""
    digest = digest_of(data)
    response = await node.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert response.status == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str = mediatypes.OCI_MANIFEST,
    **extra: Any,
) -> bytes:
    config_type = (
        mediatypes.DOCKER_CONFIG
        if media_type == mediatypes.DOCKER_MANIFEST
        else mediatypes.OCI_CONFIG
    )
    layer_type = (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if media_type == mediatypes.DOCKER_MANIFEST
        else "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
        **extra,
    }
    return json.dumps(doc).encode()


def index_manifest(children: list[bytes], *, media_type: str = mediatypes.OCI_INDEX) -> bytes:
    child_type = (
        mediatypes.DOCKER_MANIFEST
        if media_type == mediatypes.DOCKER_MANIFEST_LIST
        else mediatypes.OCI_MANIFEST
    )
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [descriptor(child_type, child) for child in children],
    }
    return json.dumps(doc).encode()


async def put_manifest(
    node: RegistryNode,
    name: str,
    reference: str,
    body: bytes,
    media_type: str = mediatypes.OCI_MANIFEST,
) -> Reply:
    return await node.request(
        "PUT",
        f"/v2/{name}/manifests/{reference}",
        data=body,
        headers={"Content-Type": media_type},
    )


async def push_image(
    node: RegistryNode, name: str, tag: str | None = "latest", *, seed: bytes = b"x", **extra: Any
) -> tuple[str, bytes]:
    """Push a config, two layers and an OCI manifest (tagged ``tag``); return (digest, body)."""
    config = b'{"architecture":"amd64","os":"linux","seed":"' + seed + b'"}'
    layers = [b"layer-one-" + seed, b"layer-two-" + seed]
    for blob in [config, *layers]:
        await push_blob(node, name, blob)
    body = image_manifest(config, layers, **extra)
    digest = digest_of(body)
    response = await put_manifest(node, name, tag or digest, body)
    assert response.status == 201, response.text
    return digest, body
