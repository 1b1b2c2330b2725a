"""Discovery endpoints: the ``/v2/`` version check, ``/v2/_catalog`` and ``tags/list``.

Owns: ``version_check``, ``list_repositories``, ``list_tags`` and the headers of a page. The
lists come from ``ctx.listing`` (the node's metadata in registry mode, the upstream through the
mirror). Lists are in lexical order; a page is ``n`` entries after ``last``; when more entries
follow, ``Link: </v2/...?n=N&last=L>; rel="next"`` points at the next page (with the request's
``ns`` kept). ``n=0`` answers an empty list with no Link. A page served from a last known list
(the upstream is down) says so: ``Warning: 110 p2preg "Response is Stale"`` and
``P2preg-Last-Confirmed: <HTTP date>``. Must not import other handler modules.
"""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import urlencode

from aiohttp import web

from p2preg.registry.handlers.common import API_VERSION, context, page_params, repo_name
from p2preg.registry.listing import Page


async def version_check(request: web.Request) -> web.Response:
    """``GET /v2/``: 200 ``{}`` with ``Docker-Distribution-API-Version: registry/2.0``."""
    return web.json_response({}, headers=API_VERSION)


async def list_repositories(request: web.Request) -> web.Response:
    """``GET /v2/_catalog?n=&last=``: ``{"repositories": [...]}``."""
    n, last = page_params(request)
    page = await context(request).listing.repositories(n, last)
    headers = _page_headers(request, "/v2/_catalog", page)
    return web.json_response({"repositories": page.entries}, headers=headers)


async def list_tags(request: web.Request) -> web.Response:
    """``GET /v2/<name>/tags/list?n=&last=``: ``{"name", "tags"}``; NAME_UNKNOWN if no such repo."""
    name = repo_name(request)
    n, last = page_params(request)
    page = await context(request).listing.tags(name, n, last)
    headers = _page_headers(request, f"/v2/{name}/tags/list", page)
    return web.json_response({"name": name, "tags": page.entries}, headers=headers)


def _page_headers(request: web.Request, path: str, page: Page) -> dict[str, str]:
    """``Link`` to the next page (keeping ``ns``), and the stale markers of a last known list."""
    headers = dict(API_VERSION)
    if page.next_last is not None:
        query: dict[str, str | int] = {}
        if page.link_n is not None:
            query["n"] = page.link_n
        query["last"] = page.next_last
        namespace = request.query.get("ns")
        if namespace:
            query["ns"] = namespace
        headers["Link"] = f'<{path}?{urlencode(query)}>; rel="next"'
    if page.confirmed_at is not None:
        headers["Warning"] = '110 p2preg "Response is Stale"'
        if page.confirmed_at > 0:
            headers["P2preg-Last-Confirmed"] = formatdate(page.confirmed_at, usegmt=True)
    return headers
