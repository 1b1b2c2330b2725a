"""Blob push endpoints: upload sessions under ``/v2/<name>/blobs/uploads/``.

Owns the HTTP side of pushing a blob:

- ``POST .../uploads/?digest=D`` with a body: monolithic push, 201.
- ``POST .../uploads/?mount=D&from=R``: 201 when ``D`` is linked in ``R`` (cross-repository
  mount), else a new session (202), as the spec allows.
- ``POST .../uploads/``: a new session, 202 with ``Location``, ``Range``, ``Docker-Upload-UUID``;
  429 ``TOOMANYREQUESTS`` when the node's or this client's (user, else address) cap of open
  sessions is reached.
- ``PATCH .../uploads/<uuid>``: append a chunk. With ``Content-Range: start-end`` the chunk must
  start at the session's offset (else 416 ``RANGE_INVALID`` with the current ``Range``) and match
  ``Content-Length``; without it the body is a streamed append.
- ``PUT .../uploads/<uuid>?digest=D``: optional last chunk, then commit. A digest mismatch answers
  ``DIGEST_INVALID`` and drops the session (as CNCF Distribution does): the client starts over.
- ``GET .../uploads/<uuid>``: 204 with the session's ``Range``; ``DELETE``: cancel, 204.

Must not import other handler modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.names import validate_name
from p2preg.registry.context import RegistryContext
from p2preg.registry.handlers.common import (
    API_VERSION,
    blob_location,
    context,
    query_digest,
    repo_name,
    require_writable,
    upload_location,
)
from p2preg.registry.ranges import parse_content_range, upload_range_header
from p2preg.registry.requestkeys import USER_KEY, request_value

_READ_BYTES = 1 << 20


async def start_upload(request: web.Request) -> web.Response:
    """``POST``: mount, monolithic push, or a new session (see the module docstring)."""
    ctx = require_writable(request)
    name = repo_name(request)
    mount = query_digest(request, "mount")
    if mount is not None:
        mounted = _try_mount(ctx, name, mount, request.query.get("from"))
        if mounted:
            return _created(name, mount)
    else:
        digest = query_digest(request)
        if digest is not None:
            await _monolithic(ctx, name, digest, _body_chunks(request, None))
            return _created(name, digest)
    record = ctx.uploads.create(name, owner=_client_id(request))
    return _session_response(202, name, record.uuid, 0)


async def upload_status(request: web.Request) -> web.Response:
    """``GET``: 204 with ``Range: 0-<offset-1>``, ``Location`` and ``Docker-Upload-UUID``."""
    name = repo_name(request)
    uuid = request.match_info["uuid"]
    record = context(request).uploads.get(name, uuid)
    return _session_response(204, name, uuid, record.offset)


async def patch_upload(request: web.Request) -> web.Response:
    """``PATCH``: append one chunk (``Content-Range``) or a stream (no ``Content-Range``)."""
    ctx = require_writable(request)
    name = repo_name(request)
    uuid = request.match_info["uuid"]
    offset = await _append_body(ctx, request, name, uuid)
    return _session_response(202, name, uuid, offset)


async def finish_upload(request: web.Request) -> web.Response:
    """``PUT ?digest=``: append the optional last chunk, verify, commit, link; 201."""
    ctx = require_writable(request)
    name = repo_name(request)
    uuid = request.match_info["uuid"]
    digest = query_digest(request)
    ctx.uploads.get(name, uuid)  # BLOB_UPLOAD_UNKNOWN before anything else
    if digest is None:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID, "the digest query parameter is required to finish an upload"
        )
    if request.body_exists:
        await _append_body(ctx, request, name, uuid)
    try:
        await ctx.uploads.finish(name, uuid, digest)
    except RegistryError as exc:
        if exc.code is ErrorCode.DIGEST_INVALID:
            ctx.uploads.cancel(name, uuid)
        raise
    return _created(name, digest)


async def cancel_upload(request: web.Request) -> web.Response:
    """``DELETE``: drop the session and its bytes; 204."""
    ctx = require_writable(request)
    name = repo_name(request)
    uuid = request.match_info["uuid"]
    ctx.uploads.get(name, uuid)
    ctx.uploads.cancel(name, uuid)
    return web.Response(status=204, headers=API_VERSION)


def _client_id(request: web.Request) -> str:
    """Whose session this is, for the per-client cap: the user name, else the remote address."""
    user = request_value(request, USER_KEY)
    if user:
        return f"user:{user}"
    return f"addr:{request.remote or 'unknown'}"


def _try_mount(ctx: RegistryContext, name: str, digest: Digest, source: str | None) -> bool:
    """Link ``digest`` into ``name`` when it is linked in ``source`` and present on disk."""
    if not source:
        return False
    validate_name(source)
    if not ctx.meta.blob_linked(source, str(digest)):
        return False
    size = ctx.blobs.size(digest)
    if size is None:
        return False
    ctx.meta.link_blob(name, str(digest), size)
    return True


async def _monolithic(
    ctx: RegistryContext, name: str, digest: Digest, chunks: AsyncIterator[bytes]
) -> None:
    """Stream the body into a blob writer, commit it if it hashes to ``digest``, link it."""
    async with ctx.blobs.writer(expected=digest) as writer:
        async for chunk in chunks:
            await writer.write(chunk)
        await writer.commit(digest)
        size = writer.size
    ctx.meta.link_blob(name, str(digest), size)


async def _append_body(ctx: RegistryContext, request: web.Request, name: str, uuid: str) -> int:
    """Append the request body to session ``uuid`` per its ``Content-Range``; the new offset."""
    record = ctx.uploads.get(name, uuid)
    header = request.headers.get("Content-Range")
    start: int | None = None
    expected: int | None = None
    if header is not None:
        start, end = parse_content_range(header)
        if start != record.offset:
            raise _out_of_order(name, uuid, record.offset, start)
        expected = end - start + 1
        declared = request.content_length
        if declared is not None and declared != expected:
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                "Content-Length does not match the Content-Range",
                {"content_length": declared, "content_range": header},
            )
    try:
        return await ctx.uploads.append(name, uuid, _body_chunks(request, expected), start)
    except RegistryError as exc:
        if exc.status == 416:  # a concurrent PATCH moved the offset after our check
            current = ctx.uploads.get(name, uuid).offset
            raise _out_of_order(name, uuid, current, start) from None
        raise


async def _body_chunks(request: web.Request, expected: int | None) -> AsyncIterator[bytes]:
    """The request body as chunks; ``SIZE_INVALID`` if it is not ``expected`` bytes long."""
    received = 0
    while True:
        chunk = await request.content.read(_READ_BYTES)
        if not chunk:
            break
        received += len(chunk)
        if expected is not None and received > expected:
            raise _size_mismatch(expected, received)
        yield chunk
    if expected is not None and received != expected:
        raise _size_mismatch(expected, received)


def _size_mismatch(expected: int, received: int) -> RegistryError:
    return RegistryError(
        ErrorCode.SIZE_INVALID,
        "chunk length does not match its Content-Range",
        {"expected": expected, "received_at_least": received},
    )


def _out_of_order(name: str, uuid: str, offset: int, start: int | None) -> RegistryError:
    return RegistryError(
        ErrorCode.RANGE_INVALID,
        f"chunk must start at offset {offset}",
        {"offset": offset, "start": start},
        status=416,
        headers={**_session_headers(name, uuid, offset), "Content-Range": f"bytes */{offset}"},
    )


def _session_headers(name: str, uuid: str, offset: int) -> dict[str, str]:
    return {
        **API_VERSION,
        "Location": upload_location(name, uuid),
        "Range": upload_range_header(offset),
        "Docker-Upload-UUID": uuid,
    }


def _session_response(status: int, name: str, uuid: str, offset: int) -> web.Response:
    return web.Response(status=status, headers=_session_headers(name, uuid, offset))


def _created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            **API_VERSION,
            "Location": blob_location(name, digest),
            "Docker-Content-Digest": str(digest),
        },
    )
