"""Real clients pull docker.io/library/busybox:latest through ``p2preg serve --mode mirror``.

The upstream is a real Distribution origin seeded with an image built offline. Every test asserts
from the node's own access log that it served every manifest and blob of the image (with a 200,
from the docker.io upstream): the clients silently fall back to docker.io otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_root, require_tool
from tests.support.daemons import (
    Distribution,
    containerd,
    distribution,
    dockerd,
    podman,
    skopeo,
    skopeo_copy,
)
from tests.support.images import BuiltImage, build_image
from tests.support.node import P2pregNode, running_node

pytestmark = pytest.mark.clients

REF = "library/busybox:latest"
ACCESS_LOG_WAIT_S = 10.0


@pytest.fixture(scope="module")
def seeded_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Distribution, BuiltImage]]:
    require_tool("docker-registry", "skopeo")
    image = build_image(tmp_path_factory.mktemp("image") / "layout", seed=33)
    with distribution() as origin:
        skopeo_copy(image.oci_ref, f"docker://{origin.host}/{REF}")
        yield origin, image


@pytest.fixture
def node(seeded_origin: tuple[Distribution, BuiltImage]) -> Iterator[P2pregNode]:
    origin, _ = seeded_origin
    with running_node(mode="mirror", extra_args=["--upstream", f"docker.io={origin.url}"]) as n:
        yield n


def ok_gets(node: P2pregNode) -> list[dict[str, Any]]:
    return [e for e in node.access_log() if e.get("method") == "GET" and e.get("status") == 200]


def assert_served_everything(node: P2pregNode, image: BuiltImage) -> None:
    # A response's access line is written once its last byte went out, which can be a moment
    # after the client, holding every byte, exited: wait (bounded) for the node's records.
    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    while True:
        try:
            _assert_served_everything(node, image)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _assert_served_everything(node: P2pregNode, image: BuiltImage) -> None:
    served = ok_gets(node)
    for digest in image.manifest_digests:
        assert any("/manifests/" in e["path"] and e.get("digest") == digest for e in served), \
            f"manifest {digest} was not served by the node"
    for digest in image.blob_digests:
        blob_gets = [e for e in served if e["path"].endswith(f"/blobs/{digest}")]
        assert blob_gets, f"blob {digest} was not served by the node"
        assert all(e.get("upstream") == "docker.io" for e in blob_gets)
        assert all(e.get("source") in ("upstream", "local") for e in blob_gets)


def test_skopeo_copies_through_the_mirror(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage], tmp_path: Path
) -> None:
    _, image = seeded_origin
    skopeo_copy(f"docker://{node.host}/{REF}", f"oci:{tmp_path / 'out'}:bb")
    assert_served_everything(node, image)
    assert (tmp_path / "out" / "blobs" / "sha256" / image.blob_digests[-1][7:]).exists()


def test_ctr_pulls_with_hosts_dir_and_runs(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage]
) -> None:
    require_root()
    require_tool("containerd", "ctr")
    _, image = seeded_origin
    with containerd() as ctd:
        ctd.write_hosts("docker.io", node.url)  # no fallback: the mirror or nothing
        ctd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(ctd.hosts_dir),
                f"docker.io/{REF}")
        run = ctd.ctr("run", "--rm", f"docker.io/{REF}", "p2preg-t1", "cat", "/etc/hello.txt")
    assert run.stdout == image.images[0].hello_text
    assert_served_everything(node, image)
    v2 = [e for e in node.access_log() if e["path"].startswith("/v2/library/")]
    assert v2 and all(e.get("ns") == "docker.io" for e in v2)


def test_dockerd_registry_mirror_pulls_and_runs(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage]
) -> None:
    require_root()
    require_tool("dockerd", "docker")
    _, image = seeded_origin
    with dockerd(registry_mirror=node.url) as daemon:
        daemon.docker("pull", "busybox:latest")
        run = daemon.docker("run", "--rm", "--network", "none", "busybox:latest", "cat",
                            "/etc/hello.txt")
    assert run.stdout == image.images[0].hello_text
    assert_served_everything(node, image)


def test_podman_registries_conf_mirror_pulls_and_runs(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage]
) -> None:
    require_root()
    require_tool("podman")
    _, image = seeded_origin
    with podman(mirror=node.host) as pm:
        pm.podman("pull", f"docker.io/{REF}")
        run = pm.podman("run", "--rm", f"docker.io/{REF}", "cat", "/etc/hello.txt")
    assert run.stdout == image.images[0].hello_text
    assert_served_everything(node, image)


def test_skopeo_inspect_and_list_tags_through_the_mirror(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage]
) -> None:
    """skopeo inspect reads the tag list too (it failed "fetching tags list: 404" before)."""
    origin, image = seeded_origin
    for tag in ("1.0", "2.0"):
        skopeo_copy(image.oci_ref, f"docker://{origin.host}/library/tagged:{tag}")
    inspected = skopeo("inspect", "--tls-verify=false", f"docker://{node.host}/library/tagged:2.0")
    document = json.loads(inspected.stdout)
    assert document["Digest"] == image.manifest_digests[0]
    assert sorted(document["RepoTags"]) == ["1.0", "2.0"]
    listed = skopeo("list-tags", "--tls-verify=false", f"docker://{node.host}/library/tagged")
    assert sorted(json.loads(listed.stdout)["Tags"]) == ["1.0", "2.0"]
    # Both answers came from the node, passed through to the docker.io upstream (the access
    # line follows the last byte: wait for it, bounded, as assert_served_everything does).
    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    while True:
        tag_lists = [e for e in node.access_log() if e["path"] == "/v2/library/tagged/tags/list"]
        if len(tag_lists) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(tag_lists) == 2
    assert all(e["status"] == 200 and e.get("upstream") == "docker.io" for e in tag_lists)
