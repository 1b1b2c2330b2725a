"""Manifest endpoints: ``GET``/``HEAD``/``PUT``/``DELETE /v2/<name>/manifests/<reference>``.

Owns: the reference check (a digest or a tag; on GET/HEAD a reference that is not a digest and
not a valid tag is ``MANIFEST_UNKNOWN`` 404, on PUT/DELETE ``TAG_INVALID`` 400), reading the
``Accept`` lines (all of them, through ``oci.manifest.parse_accept``), the manifest response
headers (``Content-Type``, ``Docker-Content-Digest``, ``ETag``, ``Content-Length``), and the PUT
pipeline: bounded read (413 ``MANIFEST_INVALID`` over ``ctx.max_manifest_bytes``), parse and
validate (``oci.manifest.parse_manifest``), digest-in-URL check, every referenced blob and child
manifest present in the repository (``MANIFEST_BLOB_UNKNOWN``), store, then 201 with
``Location``, ``Docker-Content-Digest`` and ``OCI-Subject``. DELETE by digest removes the
manifest (and its tags), by tag removes only the tag; both answer 202. Must not import other
handler modules.
"""

from __future__ import annotations

from aiohttp import web

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.manifest import ParsedManifest, manifest_too_large, parse_accept, parse_manifest
from p2preg.oci.names import is_tag, validate_tag
from p2preg.registry.context import RegistryContext
from p2preg.registry.handlers.common import (
    API_VERSION,
    context,
    manifest_location,
    repo_name,
    require_writable,
)
from p2preg.registry.requestkeys import DIGEST_KEY

DISCARD_BYTES = 8 * 1024 * 1024
"""How much of an oversize manifest body is drained so the client can read the 413."""


def parse_reference(reference: str) -> tuple[Digest | None, str | None]:
    """``(digest, None)`` for a digest reference, ``(None, tag)`` for a tag; else 400."""
    if ":" in reference:
        return parse_digest(reference), None
    return None, validate_tag(reference)


async def get_manifest(request: web.Request) -> web.Response:
    """``GET``/``HEAD``: the stored manifest, whatever the client accepts (see ``content``)."""
    name = repo_name(request)
    reference = request.match_info["reference"]
    if ":" not in reference and not is_tag(reference):
        # A reference that is neither a tag nor a digest names no manifest: 404, as the spec's
        # conformance suite expects for GET/HEAD of ``.INVALID_MANIFEST_NAME`` (PUT and DELETE
        # still answer 400 TAG_INVALID; a malformed digest is 400 DIGEST_INVALID everywhere).
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN, "manifest unknown", {"name": name, "reference": reference}
        )
    parse_reference(reference)
    accept = parse_accept(request.headers.getall("Accept", []))
    manifest = await context(request).content.manifest(name, reference, accept)
    request[DIGEST_KEY] = str(manifest.digest)
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": str(manifest.digest),
        "ETag": f'"{manifest.digest}"',
    }
    response = web.Response(body=manifest.body, headers=headers)
    response.content_type = manifest.media_type
    return response


async def put_manifest(request: web.Request) -> web.Response:
    """``PUT`` a manifest by tag or by digest; 201 (see the module docstring)."""
    ctx = require_writable(request)
    name = repo_name(request)
    url_digest, tag = parse_reference(request.match_info["reference"])
    body = await _read_bounded(request, ctx.max_manifest_bytes)
    algorithm = url_digest.algorithm if url_digest is not None else "sha256"
    parsed = parse_manifest(
        body,
        request.headers.get("Content-Type"),
        algorithm=algorithm,
        max_bytes=ctx.max_manifest_bytes,
    )
    if url_digest is not None and parsed.digest != url_digest:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            "the manifest's digest does not match the digest in the URL",
            {"url": str(url_digest), "computed": str(parsed.digest)},
        )
    references = _check_references(ctx, name, parsed)
    await ctx.blobs.put_bytes(body, parsed.digest)
    # Garbage collection may have removed a referenced blob while the bytes were stored: check
    # again, with no await between this check and the record (docs/storage.md).
    references = _check_references(ctx, name, parsed)
    ctx.meta.put_manifest(
        name,
        str(parsed.digest),
        parsed.media_type,
        parsed.size,
        tag=tag,
        subject=None if parsed.subject is None else str(parsed.subject.digest),
        artifact_type=parsed.artifact_type,
        annotations=None if parsed.annotations is None else dict(parsed.annotations),
        references=references,
    )
    headers = {
        **API_VERSION,
        "Location": manifest_location(name, parsed.digest),
        "Docker-Content-Digest": str(parsed.digest),
    }
    if parsed.subject is not None:
        headers["OCI-Subject"] = str(parsed.subject.digest)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    """``DELETE`` by digest (the manifest and its tags) or by tag (the tag only); 202."""
    ctx = require_writable(request)
    name = repo_name(request)
    digest, tag = parse_reference(request.match_info["reference"])
    if digest is not None:
        deleted = ctx.meta.delete_manifest(name, str(digest))
    else:
        assert tag is not None
        deleted = ctx.meta.delete_tag(name, tag)
    if not deleted:
        if not ctx.meta.repository_exists(name):
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, "repository name not known to registry", {"name": name}
            )
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            "manifest unknown",
            {"name": name, "reference": request.match_info["reference"]},
        )
    return web.Response(status=202, headers=API_VERSION)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 ``MANIFEST_INVALID`` when it exceeds ``limit`` bytes.

    An oversize body is read and discarded up to ``limit + DISCARD_BYTES`` so the client gets to
    read the 413 (it is usually still sending); beyond that the connection is dropped after the
    answer instead of draining it.
    """
    cap = limit + DISCARD_BYTES
    declared = request.content_length
    if declared is not None and declared > cap:
        request.protocol.force_close()
        raise manifest_too_large(declared, limit)
    parts: list[bytes] = []
    received = 0
    while chunk := await request.content.read(64 * 1024):
        received += len(chunk)
        if received > limit:
            await _discard(request, cap - received)
            raise manifest_too_large(declared or received, limit)
        parts.append(chunk)
    return b"".join(parts)


async def _discard(request: web.Request, budget: int) -> None:
    """Read and drop up to ``budget`` more body bytes; drop the connection if more remain."""
    while budget > 0 and (chunk := await request.content.read(min(budget, 64 * 1024))):
        budget -= len(chunk)
    if not request.content.at_eof():
        request.protocol.force_close()


def _check_references(ctx: RegistryContext, name: str, parsed: ParsedManifest) -> list[str]:
    """Every blob and child manifest ``parsed`` needs, checked present in ``name``."""
    references: list[str] = []
    for blob in parsed.blob_references():
        key = str(blob.digest)
        if not ctx.meta.blob_linked(name, key) or not ctx.blobs.has(blob.digest):
            raise _blob_unknown(key)
        references.append(key)
    for child in parsed.manifest_references():
        key = str(child.digest)
        if ctx.meta.get_manifest(name, key) is None:
            raise _blob_unknown(key)
        references.append(key)
    return references


def _blob_unknown(digest: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_BLOB_UNKNOWN,
        "manifest references a blob or manifest unknown to this repository",
        {"digest": digest},
    )
