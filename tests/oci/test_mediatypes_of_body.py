"""``of_manifest_body``: the media type of a manifest that came without a usable Content-Type
(from a peer, or an upstream answering ``application/json``)."""

from __future__ import annotations

import pytest

from p2preg.oci import mediatypes


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"mediaType": "application/vnd.docker.distribution.manifest.v2+json"}',
         mediatypes.DOCKER_MANIFEST),
        (b'{"schemaVersion": 2, "manifests": []}', mediatypes.OCI_INDEX),
        (b'{"schemaVersion": 2, "config": {}, "layers": []}', mediatypes.OCI_MANIFEST),
        (b"not json", mediatypes.OCI_MANIFEST),
        (b"[1, 2]", mediatypes.OCI_MANIFEST),
        (b"\xff\xfe", mediatypes.OCI_MANIFEST),
    ],
    ids=["declared", "index-by-shape", "manifest-by-shape", "not-json", "not-object", "not-utf8"],
)
def test_the_declared_type_wins_else_the_shape_decides(body: bytes, expected: str) -> None:
    assert mediatypes.of_manifest_body(body) == expected
