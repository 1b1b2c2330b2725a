"""Blob endpoints: ``GET``/``HEAD``/``DELETE /v2/<name>/blobs/<digest>``.

Owns: ``get_blob`` (200 or 206 with a single ``Range``; 416 with ``Content-Range: bytes */size``
for an unsatisfiable or malformed range, including non-ASCII digits, once the blob is known;
``Docker-Content-Digest``, ``ETag``, ``Accept-Ranges``) and ``delete_blob`` (202, unlinks the blob
from the repository; the bytes are reclaimed by garbage collection when nothing references them).
A blob still arriving (``BlobContent.growing``) is sent with sendfile as its file grows.
Reads go through ``ctx.content`` and record ``request["p2preg_source"]`` for the metrics.
Must not import other handler modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.content import BlobContent
from p2preg.registry.fileslice import send_chunks, send_file_slice, send_growing_file
from p2preg.registry.handlers.common import (
    API_VERSION,
    context,
    digest_param,
    repo_name,
    require_writable,
)
from p2preg.registry.ranges import parse_range_header
from p2preg.registry.requestkeys import SOURCE_KEY


async def get_blob(request: web.Request) -> web.StreamResponse:
    """``GET``/``HEAD`` a blob linked to the repository, whole or one byte range."""
    name = repo_name(request)
    digest = digest_param(request)
    want_body = request.method != "HEAD"
    try:
        spec = parse_range_header(request.headers.get("Range"))
    except RegistryError as exc:
        raise await _with_blob_size(request, name, digest, exc) from None
    blob = await context(request).content.blob(name, digest, spec, want_body=want_body)
    request[SOURCE_KEY] = blob.source
    response = web.StreamResponse(status=200 if blob.byte_range is None else 206)
    _set_blob_headers(response, blob)
    offset, count = _span(blob)
    if not want_body:
        response.content_length = count
        return response
    if blob.path is not None:
        try:
            fobj = await asyncio.to_thread(open, blob.path, "rb")
        except FileNotFoundError:
            raise RegistryError(
                ErrorCode.BLOB_UNKNOWN, "blob unknown to registry", {"digest": str(digest)}
            ) from None
        return await send_file_slice(request, response, fobj, offset, count)
    if blob.growing is not None:
        if blob.chunks is not None:
            await _close(blob.chunks)  # unread: the growing file is sent instead
        return await send_growing_file(request, response, blob.growing, count)
    if blob.chunks is not None:
        return await send_chunks(request, response, blob.chunks, count)
    raise RuntimeError("content source returned a blob with neither path nor chunks")


async def delete_blob(request: web.Request) -> web.Response:
    """``DELETE`` a blob: unlink it from the repository (202), ``BLOB_UNKNOWN`` if not linked."""
    ctx = require_writable(request)
    name = repo_name(request)
    digest = digest_param(request)
    if not ctx.meta.unlink_blob(name, str(digest)):
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN,
            "blob unknown to this repository",
            {"repository": name, "digest": str(digest)},
        )
    return web.Response(status=202, headers={**API_VERSION, "Docker-Content-Digest": str(digest)})


async def _with_blob_size(
    request: web.Request, name: str, digest: Digest, error: RegistryError
) -> RegistryError:
    """``error`` (a malformed ``Range``: 416) with ``Content-Range: bytes */size`` once the blob
    is known to exist; ``BLOB_UNKNOWN`` instead when it does not."""
    blob = await context(request).content.blob(name, digest, None, want_body=False)
    error.headers["Content-Range"] = f"bytes */{blob.size}"
    return error


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _span(blob: BlobContent) -> tuple[int, int]:
    if blob.byte_range is None:
        return 0, blob.size
    return blob.byte_range.start, blob.byte_range.length


def _set_blob_headers(response: web.StreamResponse, blob: BlobContent) -> None:
    response.headers.update(API_VERSION)
    response.content_type = "application/octet-stream"
    response.headers["Docker-Content-Digest"] = str(blob.digest)
    response.headers["ETag"] = f'"{blob.digest}"'
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Cache-Control"] = "max-age=31536000"
    if blob.byte_range is not None:
        response.headers["Content-Range"] = blob.byte_range.content_range()
