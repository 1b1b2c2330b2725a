"""The distribution-spec audit: one test per requirement of ``spec.md`` (v1.1) not pinned elsewhere.

Each test names the spec section it checks. Requirements already covered by the per-endpoint
suites (test_blobs, test_manifests, test_uploads, test_catalog, test_referrers, test_base) are
not repeated here; docs/api.md lists the audit's findings.
"""

from __future__ import annotations

import json

import pytest

from p2preg.oci import mediatypes
from tests.registry.conftest import RegistryNode
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

# The codes the conformance suite accepts in a 4xx body (spec.md's table, plus TAG_INVALID and
# MANIFEST_UNVERIFIED that it inherited from the Docker API).
SPEC_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED",
    "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED",
    "UNSUPPORTED", "TOOMANYREQUESTS",
}  # fmt: skip
UPLOADS = "/v2/lib/app/blobs/uploads/"


# -- Pull: "Checking if content exists" -----------------------------------------------------------


async def test_head_manifest_has_the_get_headers_and_no_body(registry: RegistryNode) -> None:
    digest, body = await push_image(registry, "lib/app", "v1")
    for reference in ("v1", digest):
        head = await registry.request("HEAD", f"/v2/lib/app/manifests/{reference}")
        assert head.status == 200
        assert head.body == b""
        assert head.headers["Docker-Content-Digest"] == digest
        assert head.headers["Content-Type"] == mediatypes.OCI_MANIFEST
        assert int(head.headers["Content-Length"]) == len(body)


async def test_head_blob_has_length_and_digest_and_no_body(registry: RegistryNode) -> None:
    data = b"some blob bytes"
    digest = await push_blob(registry, "lib/app", data)
    head = await registry.request("HEAD", f"/v2/lib/app/blobs/{digest}")
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Docker-Content-Digest"] == digest


async def test_content_is_not_visible_from_another_repository(registry: RegistryNode) -> None:
    digest, _ = await push_image(registry, "lib/app", "v1")
    await push_image(registry, "lib/other", "v1", seed=b"o")
    assert_oci_error(
        await registry.request("GET", f"/v2/lib/other/manifests/{digest}"), 404, "MANIFEST_UNKNOWN"
    )


# -- Push: "POST then PUT", "Single POST", "Pushing a blob in chunks", mounting ----------------


async def test_post_then_put_answers_202_then_201_with_locations(registry: RegistryNode) -> None:
    started = await registry.request("POST", UPLOADS, headers={"Content-Length": "0"})
    assert started.status == 202
    location = started.headers["Location"]
    assert started.headers["Docker-Upload-UUID"] in location  # the session id is in the URL
    data = b"monolithic after post"
    done = await registry.request(
        "PUT",
        f"{location}?digest={digest_of(data)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status == 201
    assert done.headers["Location"] == f"/v2/lib/app/blobs/{digest_of(data)}"
    assert (await registry.request("GET", done.headers["Location"])).body == data


async def test_each_chunk_answers_202_with_location_and_range(registry: RegistryNode) -> None:
    data = b"Hello, how are you today?"
    location = (await registry.request("POST", UPLOADS)).headers["Location"]
    for start, end in ((0, 2), (3, len(data) - 1)):
        chunk = await registry.request(
            "PATCH",
            location,
            data=data[start : end + 1],
            headers={"Content-Range": f"{start}-{end}", "Content-Type": "application/octet-stream"},
        )
        assert chunk.status == 202
        assert chunk.headers["Range"] == f"0-{end}"
        location = chunk.headers["Location"]
    status = await registry.request("GET", location)
    assert status.status == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    done = await registry.request("PUT", f"{location}?digest={digest_of(data)}")
    assert done.status == 201


async def test_the_first_chunk_must_start_at_zero(registry: RegistryNode) -> None:
    location = (await registry.request("POST", UPLOADS)).headers["Location"]
    response = await registry.request(
        "PATCH", location, data=b"abc", headers={"Content-Range": "1-3"}
    )
    assert response.status == 416
    assert response.headers["Range"] == "0-0"


async def test_the_final_chunk_may_come_with_the_closing_put(registry: RegistryNode) -> None:
    data = b"first part|final part"
    location = (await registry.request("POST", UPLOADS)).headers["Location"]
    first = await registry.request(
        "PATCH", location, data=data[:11], headers={"Content-Range": "0-10"}
    )
    done = await registry.request(
        "PUT",
        f"{first.headers['Location']}?digest={digest_of(data)}",
        data=data[11:],
        headers={"Content-Range": f"11-{len(data) - 1}"},
    )
    assert done.status == 201
    assert (await registry.request("GET", f"/v2/lib/app/blobs/{digest_of(data)}")).body == data


async def test_a_mount_answers_201_with_location_and_digest(registry: RegistryNode) -> None:
    data = b"mounted blob"
    digest = await push_blob(registry, "lib/source", data)
    mounted = await registry.request("POST", f"{UPLOADS}?mount={digest}&from=lib/source")
    assert mounted.status == 201
    assert mounted.headers["Location"] == f"/v2/lib/app/blobs/{digest}"
    assert mounted.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("source", ["lib/nowhere", None])
async def test_a_mount_that_cannot_happen_starts_an_upload_session(
    registry: RegistryNode, source: str | None
) -> None:
    digest = digest_of(b"never pushed")
    query = f"?mount={digest}" + (f"&from={source}" if source else "")
    response = await registry.request("POST", UPLOADS + query)
    assert response.status == 202
    assert "/v2/lib/app/blobs/uploads/" in response.headers["Location"]
    assert response.headers["Docker-Upload-UUID"]


# -- Push: "Pushing Manifests" --------------------------------------------------------------------


async def test_a_manifest_with_no_layers_is_accepted(registry: RegistryNode) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(registry, "lib/app", config)
    body = image_manifest(config, [])
    response = await put_manifest(registry, "lib/app", "empty", body)
    assert response.status == 201
    assert response.headers["Location"] == f"/v2/lib/app/manifests/{digest_of(body)}"


async def test_a_manifest_whose_subject_does_not_exist_is_accepted(registry: RegistryNode) -> None:
    """spec.md, "Pushing Manifests with Subject": the subject need not exist (yet)."""
    config = b"{}"
    await push_blob(registry, "lib/app", config)
    subject = digest_of(b"a manifest pushed later")
    doc = json.loads(image_manifest(config, []))
    doc["config"]["mediaType"] = mediatypes.OCI_EMPTY
    doc["subject"] = {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject, "size": 23}
    body = json.dumps(doc).encode()
    response = await put_manifest(registry, "lib/app", digest_of(body), body)
    assert_created_with_subject(response, subject)


async def test_an_index_whose_subject_does_not_exist_is_accepted_with_oci_subject(
    registry: RegistryNode,
) -> None:
    child_digest, child = await push_image(registry, "lib/app", None)
    doc = json.loads(index_manifest([child]))
    subject = digest_of(b"elsewhere")
    doc["subject"] = {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject, "size": 9}
    doc["artifactType"] = "application/x.bundle"
    body = json.dumps(doc).encode()
    response = await put_manifest(registry, "lib/app", "bundle", body, mediatypes.OCI_INDEX)
    assert_created_with_subject(response, subject)
    referrers = await registry.request("GET", f"/v2/lib/app/referrers/{subject}")
    (entry,) = referrers.json()["manifests"]
    assert entry["mediaType"] == mediatypes.OCI_INDEX
    assert entry["artifactType"] == "application/x.bundle"
    assert child_digest  # the child stays pullable
    assert (await registry.request("GET", f"/v2/lib/app/manifests/{child_digest}")).status == 200


async def test_pulling_a_nonexistent_repository_is_404(registry: RegistryNode) -> None:
    assert_oci_error(
        await registry.request("GET", "/v2/lib/none/manifests/latest"), 404, "NAME_UNKNOWN"
    )


# -- Content discovery ----------------------------------------------------------------------------


async def test_last_without_n_is_allowed(registry: RegistryNode) -> None:
    for tag in ("a", "b", "c"):
        await push_image(registry, "lib/app", tag)
    response = await registry.request("GET", "/v2/lib/app/tags/list?last=a")
    assert response.json() == {"name": "lib/app", "tags": ["b", "c"]}
    assert "Link" not in response.headers


async def test_n_zero_is_an_empty_list_without_link(registry: RegistryNode) -> None:
    await push_image(registry, "lib/app", "a")
    response = await registry.request("GET", "/v2/lib/app/tags/list?n=0")
    assert response.json() == {"name": "lib/app", "tags": []}
    assert "Link" not in response.headers


# -- Content management ---------------------------------------------------------------------------


async def test_deleting_a_manifest_in_a_nonexistent_repository_is_404(
    registry: RegistryNode,
) -> None:
    response = await registry.request("DELETE", f"/v2/lib/none/manifests/{digest_of(b'x')}")
    assert response.status == 404
    assert response.json()["errors"][0]["code"] in SPEC_CODES


async def test_deleting_a_referrer_removes_it_from_the_referrers_list(
    registry: RegistryNode,
) -> None:
    subject, _ = await push_image(registry, "lib/app", "v1")
    await push_blob(registry, "lib/app", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": "application/x.sig",
        "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": digest_of(b"{}"), "size": 2},
        "layers": [],
        "subject": {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject, "size": 1},
    }
    body = json.dumps(doc).encode()
    assert (await put_manifest(registry, "lib/app", digest_of(body), body)).status == 201
    assert (await registry.request("DELETE", f"/v2/lib/app/manifests/{digest_of(body)}")).status
    listed = await registry.request("GET", f"/v2/lib/app/referrers/{subject}")
    assert listed.json()["manifests"] == []


async def test_deleting_a_blob_twice_is_404_the_second_time(registry: RegistryNode) -> None:
    digest = await push_blob(registry, "lib/app", b"delete me")
    assert (await registry.request("DELETE", f"/v2/lib/app/blobs/{digest}")).status == 202
    assert_oci_error(
        await registry.request("DELETE", f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN"
    )
    assert_oci_error(
        await registry.request("GET", f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN"
    )


# -- Referrers -------------------------------------------------------------------------------------


async def test_an_artifact_without_artifact_type_reports_its_config_media_type(
    registry: RegistryNode,
) -> None:
    subject, _ = await push_image(registry, "lib/app", "v1")
    config = b'{"sbom": true}'
    await push_blob(registry, "lib/app", config)
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": "application/x.sbom.config", "digest": digest_of(config),
                   "size": len(config)},
        "layers": [],
        "subject": {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject, "size": 1},
    }  # fmt: skip
    body = json.dumps(doc).encode()
    assert (await put_manifest(registry, "lib/app", digest_of(body), body)).status == 201
    listed = await registry.request(
        "GET", f"/v2/lib/app/referrers/{subject}?artifactType=application/x.sbom.config"
    )
    assert listed.headers["OCI-Filters-Applied"] == "artifactType"
    (entry,) = listed.json()["manifests"]
    assert entry == {
        "mediaType": mediatypes.OCI_MANIFEST,
        "digest": digest_of(body),
        "size": len(body),
        "artifactType": "application/x.sbom.config",
    }


async def test_referrers_without_a_filter_do_not_claim_one(registry: RegistryNode) -> None:
    subject, _ = await push_image(registry, "lib/app", "v1")
    listed = await registry.request("GET", f"/v2/lib/app/referrers/{subject}")
    assert "OCI-Filters-Applied" not in listed.headers
    assert listed.json() == {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [],
    }


# -- Error codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v2/lib/app/manifests/sha256:totallywrong", b"blablabla"),
        ("PUT", "/v2/lib/app/manifests/v1", b"blablabla"),
        ("PUT", "/v2/lib/app/manifests/.bad", b"{}"),
        ("GET", "/v2/lib/app/manifests/v1", None),
        ("DELETE", "/v2/lib/app/manifests/v1", None),
        ("GET", "/v2/Lib/app/tags/list", None),
        ("GET", f"/v2/lib/app/blobs/{digest_of(b'none')}", None),
        ("POST", f"{UPLOADS}?digest=sha256:short", b"x"),
        ("POST", f"{UPLOADS}?digest={digest_of(b'other')}", b"x"),
        ("GET", f"{UPLOADS}3fa85f64-5717-4562-b3fc-2c963f66afa6", None),
        ("PUT", f"{UPLOADS}not-a-uuid?digest={digest_of(b'x')}", b"x"),
        ("POST", "/v2/", None),
    ],
)
async def test_every_4xx_body_uses_a_spec_error_code(
    registry: RegistryNode, method: str, path: str, body: bytes | None
) -> None:
    await push_image(registry, "lib/app", "other")
    response = await registry.request(method, path, data=body)
    assert 400 <= response.status < 500
    codes = [error["code"] for error in response.json()["errors"]]
    assert codes and set(codes) <= SPEC_CODES, codes
