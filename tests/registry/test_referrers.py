"""The referrers API: an OCI index of manifests whose subject is the digest, with a filter."""

from __future__ import annotations

import json

from p2preg.oci import mediatypes
from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, digest_of, push_blob, push_image, put_manifest

EMPTY_CONFIG = b"{}"


async def push_referrer(
    node: RegistryNode,
    subject: str,
    subject_size: int,
    artifact_type: str | None,
    *,
    annotations: dict[str, str] | None = None,
    config_type: str = mediatypes.OCI_EMPTY,
) -> str:
    await push_blob(node, "lib/app", EMPTY_CONFIG)
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": digest_of(EMPTY_CONFIG), "size": 2},
        "layers": [],
        "subject": {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject, "size": subject_size},
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    body = json.dumps(doc).encode()
    response = await put_manifest(node, "lib/app", digest_of(body), body)
    assert response.status == 201, response.text
    assert response.headers["OCI-Subject"] == subject
    return digest_of(body)


async def test_referrers_lists_descriptors_with_artifact_type_and_annotations(
    registry: RegistryNode,
) -> None:
    subject, body = await push_image(registry, "lib/app", "v1")
    signature = await push_referrer(
        registry, subject, len(body), "application/vnd.example.sig", annotations={"k": "v"}
    )
    sbom = await push_referrer(
        registry, subject, len(body), None, config_type="application/vnd.example.sbom"
    )
    response = await registry.request("GET", f"/v2/lib/app/referrers/{subject}")
    assert response.status == 200
    assert response.content_type == mediatypes.OCI_INDEX
    assert "OCI-Filters-Applied" not in response.headers
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == mediatypes.OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == {signature, sbom}
    assert by_digest[signature]["artifactType"] == "application/vnd.example.sig"
    assert by_digest[signature]["annotations"] == {"k": "v"}
    assert by_digest[signature]["mediaType"] == mediatypes.OCI_MANIFEST
    assert by_digest[sbom]["artifactType"] == "application/vnd.example.sbom"  # the config's type
    assert "annotations" not in by_digest[sbom]


async def test_the_artifact_type_filter_is_applied_and_announced(registry: RegistryNode) -> None:
    subject, body = await push_image(registry, "lib/app", "v1")
    signature = await push_referrer(registry, subject, len(body), "application/vnd.example.sig")
    await push_referrer(registry, subject, len(body), "application/vnd.example.sbom")
    response = await registry.request(
        "GET", f"/v2/lib/app/referrers/{subject}?artifactType=application/vnd.example.sig"
    )
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in response.json()["manifests"]] == [signature]


async def test_no_referrers_is_an_empty_index_not_a_404(registry: RegistryNode) -> None:
    for name in ("lib/app", "lib/never-pushed"):
        response = await registry.request("GET", f"/v2/{name}/referrers/{digest_of(b'x')}")
        assert response.status == 200
        assert response.json()["manifests"] == []


async def test_a_subject_may_be_pushed_after_its_referrer(registry: RegistryNode) -> None:
    absent = digest_of(b"not pushed yet")
    referrer = await push_referrer(registry, absent, 14, "application/vnd.example.sig")
    response = await registry.request("GET", f"/v2/lib/app/referrers/{absent}")
    assert [d["digest"] for d in response.json()["manifests"]] == [referrer]


async def test_a_malformed_digest_is_digest_invalid(registry: RegistryNode) -> None:
    response = await registry.request("GET", "/v2/lib/app/referrers/sha256:nothex")
    assert_oci_error(response, 400, "DIGEST_INVALID")
