"""Blob push: monolithic, POST+PUT, chunked, streamed, status, cancel, mount, every error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tests.registry.conftest import RegistryFactory, RegistryNode, Reply
from tests.registry.helpers import assert_oci_error, digest_of, push_blob

DATA = b"0123456789" * 1000
DIGEST = digest_of(DATA)


async def start(node: RegistryNode, name: str = "lib/app") -> Reply:
    response = await node.request(
        "POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"}
    )
    assert response.status == 202, response.text
    return response


async def pulled(node: RegistryNode, name: str, digest: str) -> bytes:
    response = await node.request("GET", f"/v2/{name}/blobs/{digest}")
    assert response.status == 200, response.text
    return response.body


def assert_created(response: Reply, name: str, digest: str) -> None:
    assert response.status == 201, response.text
    assert response.headers["Location"] == f"/v2/{name}/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Content-Length"] == "0"


async def test_post_starts_a_session_with_location_range_and_uuid(registry: RegistryNode) -> None:
    response = await start(registry)
    uuid = response.headers["Docker-Upload-UUID"]
    assert response.headers["Location"] == f"/v2/lib/app/blobs/uploads/{uuid}"
    assert response.headers["Range"] == "0-0"
    assert response.headers["Content-Length"] == "0"


async def test_a_single_post_with_digest_pushes_monolithically(registry: RegistryNode) -> None:
    response = await registry.request(
        "POST", f"/v2/lib/app/blobs/uploads/?digest={DIGEST}", data=DATA
    )
    assert_created(response, "lib/app", DIGEST)
    assert await pulled(registry, "lib/app", DIGEST) == DATA


async def test_a_single_post_with_the_wrong_digest_is_digest_invalid_and_stores_nothing(
    registry: RegistryNode,
) -> None:
    wrong = digest_of(b"other")
    response = await registry.request(
        "POST", f"/v2/lib/app/blobs/uploads/?digest={wrong}", data=DATA
    )
    assert_oci_error(response, 400, "DIGEST_INVALID")
    assert_oci_error(
        await registry.request("HEAD", f"/v2/lib/app/blobs/{wrong}"), 404, "BLOB_UNKNOWN"
    )
    assert_oci_error(
        await registry.request("HEAD", f"/v2/lib/app/blobs/{DIGEST}"), 404, "BLOB_UNKNOWN"
    )


async def test_post_then_put_with_the_whole_body(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]
    response = await registry.request("PUT", f"{location}?digest={DIGEST}", data=DATA)
    assert_created(response, "lib/app", DIGEST)
    assert await pulled(registry, "lib/app", DIGEST) == DATA


async def test_chunked_upload_with_content_range_then_put_with_a_last_chunk(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    first = await registry.request(
        "PATCH", location, data=DATA[:4000], headers={"Content-Range": "0-3999"}
    )
    assert first.status == 202
    assert first.headers["Range"] == "0-3999"
    assert first.headers["Location"] == location
    second = await registry.request(
        "PATCH", location, data=DATA[4000:9000], headers={"Content-Range": "4000-8999"}
    )
    assert second.headers["Range"] == "0-8999"
    done = await registry.request(
        "PUT",
        f"{location}?digest={DIGEST}",
        data=DATA[9000:],
        headers={"Content-Range": "9000-9999"},
    )
    assert_created(done, "lib/app", DIGEST)
    assert await pulled(registry, "lib/app", DIGEST) == DATA


async def test_patch_without_content_range_streams_an_append(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(DATA), 1000):
            yield DATA[i : i + 1000]

    response = await registry.request("PATCH", location, data=body())
    assert response.status == 202
    assert response.headers["Range"] == f"0-{len(DATA) - 1}"
    done = await registry.request(
        "PUT", f"{location}?digest={DIGEST}", headers={"Content-Length": "0"}
    )
    assert_created(done, "lib/app", DIGEST)


async def test_status_reports_the_offset_with_204(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]
    await registry.request("PATCH", location, data=DATA[:10], headers={"Content-Range": "0-9"})
    response = await registry.request("GET", location)
    assert response.status == 204
    assert response.headers["Range"] == "0-9"
    assert response.headers["Location"] == location
    assert response.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]


async def test_an_out_of_order_chunk_is_416_and_the_session_survives(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    await registry.request("PATCH", location, data=DATA[:10], headers={"Content-Range": "0-9"})
    for header, chunk in (("20-29", DATA[20:30]), ("0-9", DATA[:10]), ("5-14", DATA[5:15])):
        response = await registry.request(
            "PATCH", location, data=chunk, headers={"Content-Range": header}
        )
        assert_oci_error(response, 416, "RANGE_INVALID")
        assert response.headers["Range"] == "0-9"
        assert response.headers["Location"] == location
    resumed = await registry.request(
        "PATCH", location, data=DATA[10:], headers={"Content-Range": f"10-{len(DATA) - 1}"}
    )
    assert resumed.status == 202
    done = await registry.request("PUT", f"{location}?digest={DIGEST}")
    assert_created(done, "lib/app", DIGEST)


async def test_a_malformed_content_range_is_blob_upload_invalid(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]
    for header in ("bytes", "9-0", "a-b", "-5"):
        response = await registry.request(
            "PATCH", location, data=b"x", headers={"Content-Range": header}
        )
        assert_oci_error(response, 400, "BLOB_UPLOAD_INVALID")
    assert (await registry.request("GET", location)).headers["Range"] == "0-0"


async def test_a_chunk_whose_length_differs_from_its_range_is_size_invalid(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    response = await registry.request(
        "PATCH", location, data=DATA[:5], headers={"Content-Range": "0-9"}
    )
    assert_oci_error(response, 400, "SIZE_INVALID")

    async def streamed() -> AsyncIterator[bytes]:
        yield DATA[:5]

    response = await registry.request(
        "PATCH", location, data=streamed(), headers={"Content-Range": "0-9"}
    )
    assert_oci_error(response, 400, "SIZE_INVALID")
    status = await registry.request("GET", location)
    assert status.headers["Range"] == "0-0"  # nothing of the bad chunks was kept


async def test_put_with_the_wrong_digest_is_digest_invalid_and_drops_the_session(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    await registry.request("PATCH", location, data=DATA)
    response = await registry.request("PUT", f"{location}?digest={digest_of(b'nope')}")
    assert_oci_error(response, 400, "DIGEST_INVALID")
    assert_oci_error(await registry.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_put_without_a_digest_is_digest_invalid_and_keeps_the_session(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    assert_oci_error(await registry.request("PUT", location), 400, "DIGEST_INVALID")
    assert_oci_error(
        await registry.request("PUT", f"{location}?digest=sha256:short"), 400, "DIGEST_INVALID"
    )
    assert (await registry.request("GET", location)).status == 204


async def test_delete_cancels_the_session(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]
    await registry.request("PATCH", location, data=DATA[:10])
    response = await registry.request("DELETE", location)
    assert response.status == 204
    assert_oci_error(await registry.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(await registry.request("DELETE", location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_finished_session_is_gone(registry: RegistryNode) -> None:
    location = (await start(registry)).headers["Location"]
    await registry.request("PUT", f"{location}?digest={DIGEST}", data=DATA)
    assert_oci_error(await registry.request("GET", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(
        await registry.request("PATCH", location, data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN"
    )


async def test_unknown_or_malformed_upload_ids_are_blob_upload_unknown(
    registry: RegistryNode,
) -> None:
    for uuid in ("0f1e2d3c-0000-4000-8000-000000000000", "not-a-uuid!", "deadbeef", "ABC"):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            response = await registry.request(
                method, f"/v2/lib/app/blobs/uploads/{uuid}?digest={DIGEST}", data=b""
            )
            assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_session_belongs_to_its_repository(registry: RegistryNode) -> None:
    uuid = (await start(registry, "lib/app")).headers["Docker-Upload-UUID"]
    response = await registry.request("GET", f"/v2/lib/other/blobs/uploads/{uuid}")
    assert_oci_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_mount_links_a_blob_from_another_repository(registry: RegistryNode) -> None:
    await push_blob(registry, "lib/source", DATA)
    response = await registry.request(
        "POST", f"/v2/lib/target/blobs/uploads/?mount={DIGEST}&from=lib/source"
    )
    assert_created(response, "lib/target", DIGEST)
    assert await pulled(registry, "lib/target", DIGEST) == DATA


async def test_mount_of_a_blob_not_linked_in_from_falls_back_to_a_session(
    registry: RegistryNode,
) -> None:
    await push_blob(registry, "lib/elsewhere", DATA)
    for query in (f"mount={DIGEST}&from=lib/source", f"mount={DIGEST}"):
        response = await registry.request("POST", f"/v2/lib/target/blobs/uploads/?{query}")
        assert response.status == 202
        assert response.headers["Location"].startswith("/v2/lib/target/blobs/uploads/")
    assert_oci_error(
        await registry.request("HEAD", f"/v2/lib/target/blobs/{DIGEST}"), 404, "BLOB_UNKNOWN"
    )


async def test_mount_with_bad_arguments_is_refused(registry: RegistryNode) -> None:
    bad_digest = await registry.request(
        "POST", "/v2/lib/target/blobs/uploads/?mount=sha256:zz&from=lib/source"
    )
    assert_oci_error(bad_digest, 400, "DIGEST_INVALID")
    bad_from = await registry.request(
        "POST", f"/v2/lib/target/blobs/uploads/?mount={DIGEST}&from=../etc"
    )
    assert_oci_error(bad_from, 400, "NAME_INVALID")


async def test_a_read_only_node_refuses_every_push_with_unsupported(
    registry_factory: RegistryFactory,
) -> None:
    node = await registry_factory(read_only=True)
    attempts = [
        ("POST", "/v2/lib/app/blobs/uploads/"),
        ("POST", f"/v2/lib/app/blobs/uploads/?digest={DIGEST}"),
        ("PATCH", "/v2/lib/app/blobs/uploads/0f1e2d3c-0000-4000-8000-000000000000"),
        ("PUT", f"/v2/lib/app/blobs/uploads/0f1e2d3c-0000-4000-8000-000000000000?digest={DIGEST}"),
        ("DELETE", "/v2/lib/app/blobs/uploads/0f1e2d3c-0000-4000-8000-000000000000"),
        ("PUT", "/v2/lib/app/manifests/latest"),
        ("DELETE", "/v2/lib/app/manifests/latest"),
        ("DELETE", f"/v2/lib/app/blobs/{DIGEST}"),
    ]
    for method, path in attempts:
        error = assert_oci_error(await node.request(method, path, data=DATA), 405, "UNSUPPORTED")
        assert "read-only mirror" in error["message"]


async def test_concurrent_chunks_for_the_same_offset_one_wins_the_other_is_416(
    registry: RegistryNode,
) -> None:
    location = (await start(registry)).headers["Location"]
    first, second = await asyncio.gather(
        *(
            registry.request("PATCH", location, data=DATA[:10], headers={"Content-Range": "0-9"})
            for _ in range(2)
        )
    )
    assert sorted([first.status, second.status]) == [202, 416]
    loser = first if first.status == 416 else second
    assert_oci_error(loser, 416, "RANGE_INVALID")
    assert loser.headers["Range"] == "0-9"
    assert (await registry.request("GET", location)).headers["Range"] == "0-9"
