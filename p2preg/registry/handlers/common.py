"""Helpers shared by the /v2 handlers: path parameters, query parameters, common headers.

Owns: ``context``, ``repo_name``, ``digest_param``, ``require_writable``, ``blob_location``,
``manifest_location``, ``upload_location`` and ``page_params``. Every value taken from the URL is
validated here against the spec's grammar before anything else sees it.
Must not import storage internals beyond the context, or other handler modules.
"""

from __future__ import annotations

import re

from aiohttp import web

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.names import validate_name
from p2preg.registry.context import CONTEXT_KEY, RegistryContext
from p2preg.registry.listing import MAX_PAGE

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_N_RE = re.compile(r"[0-9]{1,18}")


def context(request: web.Request) -> RegistryContext:
    return request.app[CONTEXT_KEY]


def repo_name(request: web.Request) -> str:
    """The repository name from the path, validated (``NAME_INVALID`` otherwise)."""
    return validate_name(request.match_info["name"])


def digest_param(request: web.Request, key: str = "digest") -> Digest:
    """A digest from the path, validated (``DIGEST_INVALID`` otherwise)."""
    return parse_digest(request.match_info[key])


def query_digest(request: web.Request, key: str = "digest") -> Digest | None:
    """A digest from the query string, validated; None when absent."""
    value = request.query.get(key)
    if value is None:
        return None
    return parse_digest(value)


def require_writable(request: web.Request) -> RegistryContext:
    """The context, or ``UNSUPPORTED`` (405) when this node refuses writes (mirror mode)."""
    ctx = context(request)
    if ctx.read_only:
        raise RegistryError(ErrorCode.UNSUPPORTED, ctx.read_only_message)
    return ctx


def blob_location(name: str, digest: Digest) -> str:
    return f"/v2/{name}/blobs/{digest}"


def manifest_location(name: str, digest: Digest) -> str:
    return f"/v2/{name}/manifests/{digest}"


def upload_location(name: str, uuid: str) -> str:
    return f"/v2/{name}/blobs/uploads/{uuid}"


def page_params(request: web.Request) -> tuple[int | None, str | None]:
    """``n`` and ``last`` of a paginated list. ``n`` must be a non-negative integer.

    Raises ``PAGINATION_NUMBER_INVALID`` (400) for anything else; ``n`` above ``MAX_PAGE`` is
    clamped to it, and callers page by ``MAX_PAGE`` when ``n`` is absent.
    """
    raw_n = request.query.get("n")
    n: int | None = None
    if raw_n is not None:
        if _N_RE.fullmatch(raw_n) is None:
            raise RegistryError(
                ErrorCode.PAGINATION_NUMBER_INVALID,
                "n must be a non-negative integer",
                {"n": raw_n},
            )
        n = min(int(raw_n), MAX_PAGE)
    last = request.query.get("last")
    return n, (last or None)
