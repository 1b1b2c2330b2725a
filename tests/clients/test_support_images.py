"""The offline image builder makes valid, deterministic OCI image layouts.

Specification for ``tests/support/images.py``, which every client test relies on: same arguments,
same digests; every descriptor matches its blob; config ``diff_ids`` are the digests of the
uncompressed layers; the first layer holds a static busybox with its links and the second one
``/etc/hello.txt``; two platforms make an index naming both.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.images import (
    BUSYBOX_PATH,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    MULTI_ARCH,
    build_image,
)


@pytest.fixture(autouse=True)
def _busybox() -> None:
    if not BUSYBOX_PATH.exists():
        pytest.skip("busybox-static is not installed")


def test_same_arguments_give_the_same_digests(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", payload_layer_sizes=(1000,), seed=5)
    second = build_image(tmp_path / "b", payload_layer_sizes=(1000,), seed=5)
    other = build_image(tmp_path / "c", payload_layer_sizes=(1000,), seed=6)

    assert first.top == second.top
    assert first.blob_digests == second.blob_digests
    assert other.top.digest != first.top.digest
    # The busybox layer is shared by every seed; the payload layer is not.
    assert other.images[0].layers[0] == first.images[0].layers[0]
    assert other.images[0].layers[2].digest != first.images[0].layers[2].digest


def test_every_descriptor_matches_its_blob_and_diff_ids_match_layers(tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", payload_layer_sizes=(4096, 10), seed=1)
    manifest = json.loads(image.read(image.top.digest))
    config = json.loads(image.read(manifest["config"]["digest"]))

    assert manifest["mediaType"] == MT_OCI_MANIFEST
    assert len(manifest["layers"]) == 4
    for descriptor in [manifest["config"], *manifest["layers"]]:
        data = image.read(descriptor["digest"])
        assert len(data) == descriptor["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
    diff_ids = [
        "sha256:" + hashlib.sha256(gzip.decompress(image.read(layer["digest"]))).hexdigest()
        for layer in manifest["layers"]
    ]
    assert config["rootfs"]["diff_ids"] == diff_ids


def test_layers_hold_busybox_with_links_and_hello(tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", seed=2, hello_text="hi\n")
    busybox_layer, hello_layer = image.images[0].layers

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(image.read(busybox_layer.digest)))) as t:
        members = {m.name: m for m in t.getmembers()}
        assert members["bin/busybox"].size == BUSYBOX_PATH.stat().st_size
        for link in ("sh", "cat", "echo"):
            assert members[f"bin/{link}"].issym()
            assert members[f"bin/{link}"].linkname == "busybox"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(image.read(hello_layer.digest)))) as t:
        hello = t.extractfile("etc/hello.txt")
        assert hello is not None
        assert hello.read() == b"hi\n"


def test_two_platforms_make_an_index_tagged_in_the_layout(tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", platforms=MULTI_ARCH, seed=3)
    index_json = json.loads((tmp_path / "img" / "index.json").read_text())
    index = json.loads(image.read(image.top.digest))

    assert image.index == image.top
    assert image.top.media_type == MT_OCI_INDEX
    assert [m["digest"] for m in index_json["manifests"]] == [image.top.digest]
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    assert [m["digest"] for m in index["manifests"]] == [i.manifest.digest for i in image.images]
    assert len(image.manifest_digests) == 3


def test_several_tags_share_one_layout(tmp_path: Path) -> None:
    first = build_image(tmp_path / "img", tag="one", seed=1)
    second = build_image(tmp_path / "img", tag="two", seed=2)
    index_json = json.loads((tmp_path / "img" / "index.json").read_text())

    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index_json["manifests"]
    }
    assert names == {"one": first.top.digest, "two": second.top.digest}
