"""skopeo pushes images to a p2preg node and copies them back byte-identical.

Specification: whatever a client pushes (an OCI image with several layers, a Docker schema-2 image,
a multi-arch OCI index), the node serves back the exact manifest bytes and the exact blob bytes
under the same digests; comparing digests, not exit codes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.clients._layouts import dir_contents, oci_layout_contents, oci_layout_top_digest
from tests.conftest import require_tool
from tests.support.daemons import skopeo_copy, skopeo_inspect_raw
from tests.support.images import MULTI_ARCH, BuiltImage, build_image
from tests.support.node import P2pregNode

pytestmark = pytest.mark.clients

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("skopeo")


def assert_node_serves_blobs(node: P2pregNode, repo: str, image: BuiltImage) -> None:
    """GET every config and layer from the node and check length and digest of the body."""
    for digest in image.blob_digests:
        response = node.request("GET", f"/v2/{repo}/blobs/{digest}")
        assert response.status == 200, (digest, response.status, response.body[:300])
        assert "sha256:" + hashlib.sha256(response.body).hexdigest() == digest
        assert response.body == image.read(digest)
        assert response.headers.get("docker-content-digest") == digest


def test_oci_image_with_several_layers_round_trips_byte_identical(
    p2preg_node: P2pregNode, tmp_path: Path
) -> None:
    image = build_image(
        tmp_path / "src", payload_layer_sizes=(64 * 1024, 1 << 20, 3 << 20), seed=11
    )
    assert len(image.images[0].layers) == 5
    ref = f"docker://{p2preg_node.host}/clients/oci-app:v1"

    skopeo_copy(image.oci_ref, ref)

    assert skopeo_inspect_raw(ref) == image.read(image.top.digest)
    back = tmp_path / "back"
    skopeo_copy(ref, f"oci:{back}:v1")
    assert oci_layout_top_digest(back, "v1") == image.top.digest
    pulled = oci_layout_contents(back)
    expected = {d: image.read(d) for d in [*image.manifest_digests, *image.blob_digests]}
    assert pulled == expected
    assert_node_serves_blobs(p2preg_node, "clients/oci-app", image)


def test_docker_schema2_image_round_trips_byte_identical(
    p2preg_node: P2pregNode, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", payload_layer_sizes=(512 * 1024,), seed=12)
    # Convert locally first, so the exact schema-2 bytes that get pushed are known.
    local = tmp_path / "v2s2"
    skopeo_copy(image.oci_ref, f"dir:{local}", dest_format="v2s2")
    manifest = json.loads((local / "manifest.json").read_bytes())
    assert manifest["mediaType"] == DOCKER_MANIFEST_V2
    ref = f"docker://{p2preg_node.host}/clients/docker-app:v2"

    skopeo_copy(f"dir:{local}", ref)

    served = skopeo_inspect_raw(ref)
    assert served == (local / "manifest.json").read_bytes()
    back = tmp_path / "back"
    skopeo_copy(ref, f"dir:{back}")
    assert dir_contents(back) == dir_contents(local)
    response = p2preg_node.request(
        "HEAD", "/v2/clients/docker-app/manifests/v2", headers={"Accept": DOCKER_MANIFEST_V2}
    )
    assert response.status == 200
    assert response.headers.get("content-type") == DOCKER_MANIFEST_V2
    assert response.headers.get("docker-content-digest") == (
        "sha256:" + hashlib.sha256(served).hexdigest()
    )


def test_multi_arch_index_round_trips_byte_identical(
    p2preg_node: P2pregNode, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", platforms=MULTI_ARCH, seed=13)
    assert image.index is not None
    ref = f"docker://{p2preg_node.host}/clients/multi:v3"

    skopeo_copy(image.oci_ref, ref, all_images=True)

    assert skopeo_inspect_raw(ref) == image.read(image.index.digest)
    for platform_image in image.images:
        by_digest = f"docker://{p2preg_node.host}/clients/multi@{platform_image.manifest.digest}"
        assert skopeo_inspect_raw(by_digest) == image.read(platform_image.manifest.digest)
    back = tmp_path / "back"
    skopeo_copy(ref, f"oci:{back}:v3", all_images=True)
    assert oci_layout_top_digest(back, "v3") == image.index.digest
    expected = {d: image.read(d) for d in [*image.manifest_digests, *image.blob_digests]}
    assert oci_layout_contents(back) == expected
    assert_node_serves_blobs(p2preg_node, "clients/multi", image)
