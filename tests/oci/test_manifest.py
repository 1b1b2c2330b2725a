"""Specification of ``p2preg.oci.manifest``: manifest validation and Accept parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.manifest import (
    MAX_MANIFEST_BYTES,
    accepts,
    parse_accept,
    parse_manifest,
)

CONFIG = Digest.of_bytes(b"{}")
LAYER = Digest.of_bytes(b"layer")


def descriptor(digest: Digest, media_type: str, size: int = 2, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def image(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": descriptor(CONFIG, mediatypes.OCI_CONFIG),
        "layers": [descriptor(LAYER, "application/vnd.oci.image.layer.v1.tar+gzip", 5)],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def invalid(body: bytes, content_type: str | None = mediatypes.OCI_MANIFEST) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_manifest(body, content_type)
    assert info.value.code is ErrorCode.MANIFEST_INVALID
    return info.value


def test_an_oci_image_manifest_lists_its_config_and_layers_as_blob_references() -> None:
    body = encode(image())
    parsed = parse_manifest(body, mediatypes.OCI_MANIFEST)
    assert parsed.media_type == mediatypes.OCI_MANIFEST
    assert parsed.digest == Digest.of_bytes(body)
    assert parsed.size == len(body)
    assert [d.digest for d in parsed.blob_references()] == [CONFIG, LAYER]
    assert parsed.manifest_references() == []
    assert not parsed.is_index


def test_the_digest_uses_the_requested_algorithm() -> None:
    body = encode(image())
    assert parse_manifest(body, None, algorithm="sha512").digest == Digest.of_bytes(body, "sha512")


def test_an_index_lists_its_child_manifests() -> None:
    child = Digest.of_bytes(b"child")
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [descriptor(child, mediatypes.OCI_MANIFEST)],
        }
    )
    parsed = parse_manifest(body, mediatypes.OCI_INDEX)
    assert parsed.is_index
    assert [d.digest for d in parsed.manifest_references()] == [child]
    assert parsed.blob_references() == []
    assert parsed.artifact_type is None


def test_foreign_layers_are_not_required_to_exist() -> None:
    foreign = descriptor(
        LAYER, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", urls=["https://x/l"]
    )
    body = encode(
        image(
            mediaType=mediatypes.DOCKER_MANIFEST,
            config=descriptor(CONFIG, mediatypes.DOCKER_CONFIG),
            layers=[foreign],
        )
    )
    parsed = parse_manifest(body, mediatypes.DOCKER_MANIFEST)
    assert [d.digest for d in parsed.blob_references()] == [CONFIG]


def test_the_artifact_type_falls_back_to_the_config_media_type() -> None:
    assert parse_manifest(encode(image()), None).artifact_type == mediatypes.OCI_CONFIG
    typed = parse_manifest(encode(image(artifactType="application/x.sig")), None)
    assert typed.artifact_type == "application/x.sig"


def test_subject_and_annotations_are_kept() -> None:
    subject = Digest.of_bytes(b"subject")
    body = encode(
        image(
            subject=descriptor(subject, mediatypes.OCI_MANIFEST),
            annotations={"org.example": "yes"},
        )
    )
    parsed = parse_manifest(body, mediatypes.OCI_MANIFEST)
    assert parsed.subject is not None and parsed.subject.digest == subject
    assert parsed.annotations == {"org.example": "yes"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, mediatypes.OCI_MANIFEST),
        ("application/json", mediatypes.OCI_MANIFEST),
        (mediatypes.OCI_MANIFEST + "; charset=utf-8", mediatypes.OCI_MANIFEST),
    ],
)
def test_the_media_type_comes_from_content_type_or_the_body(
    content_type: str | None, expected: str
) -> None:
    assert parse_manifest(encode(image()), content_type).media_type == expected


def test_without_any_media_type_the_structure_decides() -> None:
    assert parse_manifest(encode(image(mediaType=None)), None).media_type == mediatypes.OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(encode(index), None).media_type == mediatypes.OCI_INDEX


def test_a_body_media_type_that_contradicts_content_type_is_refused() -> None:
    error = invalid(encode(image()), mediatypes.DOCKER_MANIFEST)
    assert "does not match" in error.message


def test_an_unsupported_content_type_is_refused() -> None:
    invalid(encode(image(mediaType=None)), "text/plain")
    invalid(encode(image(mediaType=mediatypes.DOCKER_SCHEMA1_SIGNED)), None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"string"',
        b"[" * 100_000,
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(body: bytes) -> None:
    invalid(body)


@pytest.mark.parametrize(
    "overrides",
    [
        {"schemaVersion": 1},
        {"schemaVersion": "2"},
        {"schemaVersion": True},
        {"schemaVersion": None},
        {"config": None},
        {"config": "sha256:abc"},
        {"config": descriptor(CONFIG, "")},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:abc", "size": 2}},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(CONFIG), "size": -1}},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(CONFIG), "size": 1.5}},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(CONFIG)}},
        {"layers": "nope"},
        {"layers": [{"mediaType": "x", "digest": str(LAYER), "size": 1, "urls": [1]}]},
        {"annotations": {"a": 1}},
        {"artifactType": 7},
        {"subject": "sha256:abc"},
        {"mediaType": 5},
    ],
)
def test_schema_violations_are_refused(overrides: dict[str, Any]) -> None:
    doc = image()
    doc.update(overrides)
    invalid(encode(doc), None)


def test_an_index_needs_a_manifests_array() -> None:
    invalid(encode({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX}), mediatypes.OCI_INDEX)


def test_a_manifest_over_the_limit_is_413_manifest_invalid() -> None:
    body = b" " * (MAX_MANIFEST_BYTES + 1)
    error = invalid(body)
    assert error.status == 413


def test_accept_reads_every_line_and_every_comma_separated_entry() -> None:
    lines = [
        f"{mediatypes.DOCKER_MANIFEST}, {mediatypes.DOCKER_MANIFEST_LIST}",
        mediatypes.OCI_MANIFEST,
    ]
    assert parse_accept(lines) == (
        mediatypes.DOCKER_MANIFEST,
        mediatypes.DOCKER_MANIFEST_LIST,
        mediatypes.OCI_MANIFEST,
    )


def test_accept_orders_by_quality_and_drops_q_zero() -> None:
    line = "a/x;q=0.5, b/y, c/z;q=0, d/w;q=oops, */*;q=0.1"
    assert parse_accept([line]) == ("b/y", "d/w", "a/x", "*/*")


def test_accepts_matches_exact_types_and_wildcards() -> None:
    assert accepts((), mediatypes.OCI_INDEX)
    assert accepts(("application/*",), mediatypes.OCI_INDEX)
    assert accepts(("*/*",), mediatypes.OCI_INDEX)
    assert accepts((mediatypes.OCI_INDEX,), mediatypes.OCI_INDEX)
    assert not accepts((mediatypes.DOCKER_MANIFEST,), mediatypes.OCI_INDEX)
