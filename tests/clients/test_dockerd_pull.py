"""dockerd pulls an image from a p2preg node and runs it.

Specification: after skopeo pushes the busybox test image, ``docker pull 127.0.0.1:PORT/library/
busybox:latest`` succeeds, ``docker run --rm --network none ... cat /etc/hello.txt`` prints the
file from the image, and the node's own records (access log and metrics) show that it served the
manifest and every blob of the pull: docker got the image from this node and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.support.daemons import dockerd, skopeo_copy
from tests.support.images import build_image
from tests.support.node import P2pregNode

pytestmark = pytest.mark.clients

BYTES_SERVED = "p2preg_blob_bytes_served_total"


def test_dockerd_pulls_from_the_node_and_runs_the_image(
    p2preg_node: P2pregNode, tmp_path: Path
) -> None:
    require_root()
    require_tool("dockerd", "docker", "skopeo")
    hello = "hello from the p2preg node, via dockerd\n"
    image = build_image(tmp_path / "src", seed=31, hello_text=hello)
    ref = f"{p2preg_node.host}/library/busybox:latest"
    skopeo_copy(image.oci_ref, f"docker://{ref}")
    served_before = p2preg_node.metric(BYTES_SERVED, source="local")

    with dockerd() as docker:
        docker.docker("pull", ref)
        output = docker.docker("run", "--rm", "--network", "none", ref, "cat", "/etc/hello.txt")

    assert output.stdout == hello
    manifest = image.images[0].manifest.digest
    # docker resolves the tag with HEAD, then GETs the manifest by digest.
    manifest_gets = p2preg_node.wait_served("GET", f"/v2/library/busybox/manifests/{manifest}")
    assert manifest_gets >= 1, p2preg_node.requests_matching("GET", "/manifests/")
    sizes = {image.images[0].config.digest: image.images[0].config.size}
    sizes.update({layer.digest: layer.size for layer in image.images[0].layers})
    for digest, size in sizes.items():
        path = f"/v2/library/busybox/blobs/{digest}"
        p2preg_node.wait_served("GET", path)
        records = p2preg_node.requests_matching("GET", path)
        whole = [r for r in records if r.get("status") == 200 and r.get("bytes") == size]
        assert whole, f"the node did not serve all of {digest}: {records}"
    layer_bytes = sum(layer.size for layer in image.images[0].layers)
    served_after = p2preg_node.wait_metric(
        BYTES_SERVED, served_before + layer_bytes, source="local"
    )
    assert served_after - served_before >= layer_bytes
