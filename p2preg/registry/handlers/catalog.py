"""Discovery endpoints: the ``/v2/`` version check, ``/v2/_catalog`` and ``tags/list``.

Owns: ``version_check``, ``list_repositories``, ``list_tags`` and the ``Link`` header of a page.
Lists are in lexical order (the metadata store's order); a page is ``n`` entries after ``last``;
when more entries follow, ``Link: </v2/...?n=N&last=L>; rel="next"`` points at the next page.
``n=0`` answers an empty list with no Link. Must not import other handler modules.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp import web

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.handlers.common import API_VERSION, MAX_PAGE, context, page_params, repo_name


async def version_check(request: web.Request) -> web.Response:
    """``GET /v2/``: 200 ``{}`` with ``Docker-Distribution-API-Version: registry/2.0``."""
    return web.json_response({}, headers=API_VERSION)


async def list_repositories(request: web.Request) -> web.Response:
    """``GET /v2/_catalog?n=&last=``: ``{"repositories": [...]}``."""
    n, last = page_params(request)
    meta = context(request).meta
    names, more = _page(lambda limit: meta.repositories(last, limit), n)
    headers = dict(API_VERSION)
    if more:
        headers["Link"] = _next_link("/v2/_catalog", n, names[-1])
    return web.json_response({"repositories": names}, headers=headers)


async def list_tags(request: web.Request) -> web.Response:
    """``GET /v2/<name>/tags/list?n=&last=``: ``{"name", "tags"}``; NAME_UNKNOWN if no such repo."""
    name = repo_name(request)
    n, last = page_params(request)
    meta = context(request).meta
    if not meta.repository_exists(name):
        raise RegistryError(
            ErrorCode.NAME_UNKNOWN, "repository name not known to registry", {"name": name}
        )
    tags, more = _page(lambda limit: meta.tags(name, last, limit), n)
    headers = dict(API_VERSION)
    if more:
        headers["Link"] = _next_link(f"/v2/{name}/tags/list", n, tags[-1])
    return web.json_response({"name": name, "tags": tags}, headers=headers)


def _page(fetch: Callable[[int], list[str]], n: int | None) -> tuple[list[str], bool]:
    """Fetch one page of ``n`` (``MAX_PAGE`` when None) and whether more entries follow."""
    size = MAX_PAGE if n is None else n
    if size == 0:
        return [], False
    entries = fetch(size + 1)
    return entries[:size], len(entries) > size


def _next_link(path: str, n: int | None, last: str) -> str:
    query = urlencode({"n": MAX_PAGE if n is None else n, "last": last})
    return f'<{path}?{query}>; rel="next"'
