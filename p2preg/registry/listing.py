"""Where the discovery endpoints read their lists from: tags of a repository and the catalog.

Owns: ``Page`` (one page of a list, where the next one starts, and whether it is a stale
stand-in), the ``Listing`` protocol the ``tags/list`` and ``_catalog`` handlers call, ``page_of``
(one page of an in-memory sorted list) and ``LocalListing`` (the node's own metadata: registry
mode). The mirror plugs in its own ``Listing`` (``mirrorlists.MirrorListing``).

Contract: lists are in lexical (bytewise) order; a page holds at most ``n`` entries after
``last`` (``n`` None: the implementation's own page size); ``next_last`` is None on the last page.
An unknown repository is ``NAME_UNKNOWN``. Must not import aiohttp or the handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.metadata import MetadataStore

MAX_PAGE = 10_000
"""The most entries one tags/catalog page returns; larger ``n`` is clamped (and a Link follows)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list.

    ``next_last``: the ``last`` of the next page (None: this is the last page). ``link_n``: the
    ``n`` the next page's link carries (None: leave it out). ``confirmed_at``: set when the page
    comes from a last known list instead of its source (wall-clock seconds it was last confirmed,
    0.0 when unknown), so the handler can say so.
    """

    entries: list[str]
    next_last: str | None = None
    link_n: int | None = None
    confirmed_at: float | None = None

    @property
    def stale(self) -> bool:
        return self.confirmed_at is not None


class Listing(Protocol):
    """The lists behind ``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog``."""

    async def tags(self, repo: str, n: int | None, last: str | None) -> Page: ...

    async def repositories(self, n: int | None, last: str | None) -> Page: ...


def fetch_page(fetch: Callable[[int], list[str]], n: int | None) -> Page:
    """One page of ``n`` (``MAX_PAGE`` when None) from ``fetch(limit)``, which returns up to
    ``limit`` entries after the page's ``last``."""
    size = MAX_PAGE if n is None else min(n, MAX_PAGE)
    if size == 0:
        return Page([], None, size)
    entries = fetch(size + 1)
    page = entries[:size]
    return Page(page, page[-1] if len(entries) > size else None, size)


def page_of(entries: Sequence[str], n: int | None, last: str | None) -> Page:
    """One page of the sorted ``entries`` (see ``fetch_page``)."""
    after = [entry for entry in entries if last is None or entry > last]
    return fetch_page(lambda limit: after[:limit], n)


class LocalListing:
    """The node's own repositories and tags (registry mode, and the default)."""

    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

    async def tags(self, repo: str, n: int | None, last: str | None) -> Page:
        if not self._meta.repository_exists(repo):
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, "repository name not known to registry", {"name": repo}
            )
        return fetch_page(lambda limit: self._meta.tags(repo, last, limit), n)

    async def repositories(self, n: int | None, last: str | None) -> Page:
        return fetch_page(lambda limit: self._meta.repositories(last, limit), n)
