"""Blob pull and delete: GET/HEAD with Range, visibility by repository link, DELETE."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.content import BlobContent, ManifestContent
from p2preg.registry.ranges import RangeSpec, resolve_range
from p2preg.registry.requestkeys import SOURCE_KEY, request_value
from tests.registry.conftest import RegistryFactory, RegistryNode
from tests.registry.helpers import assert_oci_error, digest_of, push_blob

DATA = bytes(range(256)) * 40  # 10240 bytes


async def test_get_serves_the_whole_blob_with_digest_etag_and_ranges_headers(
    registry: RegistryNode,
) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    response = await registry.request("GET", f"/v2/lib/app/blobs/{digest}")
    assert response.status == 200
    assert response.body == DATA
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.content_type == "application/octet-stream"


async def test_head_answers_the_headers_without_a_body(registry: RegistryNode) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    response = await registry.request("HEAD", f"/v2/lib/app/blobs/{digest}")
    assert response.status == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-40", 10200, 10239),
        ("bytes=10200-99999", 10200, 10239),
    ],
)
async def test_a_single_range_answers_206_with_content_range(
    registry: RegistryNode, header: str, start: int, end: int
) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    response = await registry.request(
        "GET", f"/v2/lib/app/blobs/{digest}", headers={"Range": header}
    )
    assert response.status == 206
    assert response.body == DATA[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-20001", "bytes=-0"])
async def test_an_unsatisfiable_range_answers_416_with_the_size(
    registry: RegistryNode, header: str
) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    response = await registry.request(
        "GET", f"/v2/lib/app/blobs/{digest}", headers={"Range": header}
    )
    assert_oci_error(response, 416, "RANGE_INVALID")
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",
        "lines=0-1",
        "bytes=9-3",
        "garbage",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits: int() would parse them
        "bytes=\uff10-\uff15",  # fullwidth digits
        "bytes=0-\u0665",
        "bytes=\u00b9-2",  # superscript one
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=1_0-20",
        "bytes=" + "9" * 40 + "-",
    ],
)
async def test_multiple_or_malformed_ranges_answer_416_with_the_size(
    registry: RegistryNode, header: str
) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    for method in ("GET", "HEAD"):
        raw = header.encode().decode("latin-1")  # the UTF-8 bytes on the wire
        response = await registry.request(
            method, f"/v2/lib/app/blobs/{digest}", headers={"Range": raw}
        )
        assert_oci_error(response, 416, "RANGE_INVALID")
        assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


async def test_a_malformed_range_on_an_unknown_blob_is_404(registry: RegistryNode) -> None:
    response = await registry.request(
        "GET", f"/v2/lib/app/blobs/{digest_of(b'nope')}", headers={"Range": "garbage"}
    )
    assert_oci_error(response, 404, "BLOB_UNKNOWN")


async def test_the_empty_blob_is_served(registry: RegistryNode) -> None:
    digest = await push_blob(registry, "lib/app", b"")
    response = await registry.request("GET", f"/v2/lib/app/blobs/{digest}")
    assert response.status == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == "0"


async def test_a_blob_is_visible_only_in_repositories_it_is_linked_to(
    registry: RegistryNode,
) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    for method in ("GET", "HEAD"):
        response = await registry.request(method, f"/v2/lib/other/blobs/{digest}")
        assert_oci_error(response, 404, "BLOB_UNKNOWN")


async def test_an_unknown_blob_is_blob_unknown(registry: RegistryNode) -> None:
    response = await registry.request("GET", f"/v2/lib/app/blobs/{digest_of(b'nothing')}")
    assert_oci_error(response, 404, "BLOB_UNKNOWN")


async def test_delete_unlinks_the_blob_from_the_repository_only(registry: RegistryNode) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    await push_blob(registry, "lib/other", DATA)
    response = await registry.request("DELETE", f"/v2/lib/app/blobs/{digest}")
    assert response.status == 202
    assert_oci_error(
        await registry.request("GET", f"/v2/lib/app/blobs/{digest}"), 404, "BLOB_UNKNOWN"
    )
    assert (await registry.request("GET", f"/v2/lib/other/blobs/{digest}")).body == DATA
    again = await registry.request("DELETE", f"/v2/lib/app/blobs/{digest}")
    assert_oci_error(again, 404, "BLOB_UNKNOWN")


async def test_a_blob_gone_from_disk_is_blob_unknown_not_a_crash(registry: RegistryNode) -> None:
    digest = await push_blob(registry, "lib/app", DATA)
    registry.ctx.blobs.delete(parse_digest(digest))
    response = await registry.request("GET", f"/v2/lib/app/blobs/{digest}")
    assert_oci_error(response, 404, "BLOB_UNKNOWN")


async def test_the_source_of_served_bytes_is_recorded_for_metrics(
    registry_factory: RegistryFactory,
) -> None:
    seen: list[object] = []
    pulled = asyncio.Event()

    @web.middleware
    async def spy(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        seen.append(request_value(request, SOURCE_KEY))
        if request.method == "GET":
            pulled.set()
        return response

    node = await registry_factory(middlewares=[spy])
    digest = await push_blob(node, "lib/app", DATA)
    await node.request("GET", f"/v2/lib/app/blobs/{digest}")
    await asyncio.wait_for(pulled.wait(), timeout=10)
    assert seen == [None, "local"]  # the push, then the pull


class StreamingSource:
    """A content source that streams ``DATA`` in chunks, optionally failing after the first."""

    def __init__(self, *, fail_midway: bool = False) -> None:
        self.fail_midway = fail_midway
        self.closed = asyncio.Event()

    async def manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestContent:
        raise RegistryError(ErrorCode.MANIFEST_UNKNOWN)

    async def blob(
        self, repo: str, digest: Digest, byte_range: RangeSpec | None, *, want_body: bool = True
    ) -> BlobContent:
        resolved = None if byte_range is None else resolve_range(byte_range, len(DATA))
        start, end = (0, len(DATA) - 1) if resolved is None else (resolved.start, resolved.end)
        return BlobContent(
            digest, len(DATA), resolved, chunks=self._chunks(start, end), source="peer"
        )

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            for offset in range(start, end + 1, 1000):
                yield DATA[offset : min(offset + 1000, end + 1)]
                if self.fail_midway:
                    raise RegistryError(ErrorCode.DIGEST_INVALID, "peer sent wrong bytes")
        finally:
            self.closed.set()


async def test_a_streaming_source_is_served_whole_or_by_range(
    registry_factory: RegistryFactory,
) -> None:
    source = StreamingSource()
    node = await registry_factory(content=source)
    digest = digest_of(DATA)
    whole = await node.request("GET", f"/v2/lib/app/blobs/{digest}")
    assert whole.status == 200
    assert whole.body == DATA
    part = await node.request(
        "GET", f"/v2/lib/app/blobs/{digest}", headers={"Range": "bytes=1500-2499"}
    )
    assert part.status == 206
    assert part.body == DATA[1500:2500]
    assert part.headers["Content-Range"] == f"bytes 1500-2499/{len(DATA)}"


async def test_a_source_failing_mid_stream_aborts_the_connection_never_completes_it(
    registry_factory: RegistryFactory,
) -> None:
    source = StreamingSource(fail_midway=True)
    node = await registry_factory(content=source)
    with pytest.raises(aiohttp.ClientPayloadError):
        await node.request("GET", f"/v2/lib/app/blobs/{digest_of(DATA)}")
    await asyncio.wait_for(source.closed.wait(), timeout=10)
    assert (await node.request("GET", "/v2/")).status == 200


@pytest.mark.parametrize("sendfile", ["loop.sendfile", "chunked fallback (uvloop)"])
async def test_a_multi_megabyte_blob_is_served_exactly_whole_and_by_range(
    registry: RegistryNode, monkeypatch: pytest.MonkeyPatch, sendfile: str
) -> None:
    if sendfile != "loop.sendfile":  # uvloop has no loop.sendfile: it raises NotImplementedError

        async def no_sendfile(*args: object, **kwargs: object) -> int:
            raise NotImplementedError

        monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", no_sendfile)
    big = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
    digest = await push_blob(registry, "lib/big", big)
    whole = await registry.request("GET", f"/v2/lib/big/blobs/{digest}")
    assert whole.body == big
    start, end = 1024 * 1024 - 7, 4 * 1024 * 1024 + 11
    part = await registry.request(
        "GET", f"/v2/lib/big/blobs/{digest}", headers={"Range": f"bytes={start}-{end}"}
    )
    assert part.status == 206
    assert part.body == big[start : end + 1]
