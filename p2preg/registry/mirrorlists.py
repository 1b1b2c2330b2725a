"""Tag lists and the catalog in mirror mode: passed through to the upstream, remembered for outages.

Owns: ``MirrorListing`` (the mirror's ``listing.Listing``), ``TagListStore`` (the last known tag
list of each mirrored repository, one JSON file per repository under ``<data>/taglists/``) and
``client_name`` (a cached repository's name as clients ask for it).

Rules:
- ``tags/list`` goes to the upstream the request names (``?ns=``, a registry host as the first
  name component, else Docker Hub: ``MirrorContentSource.route``) with the client's ``n`` and
  ``last``; the upstream's ``Link`` says where the next page starts and the node's own ``Link``
  (built by the handler) points back at the node. A 404 upstream is ``NAME_UNKNOWN``.
- Every page answered is merged into the stored list: the page replaces the stored tags in the
  range it covers (after ``last``, up to its last tag, or to the end on the last page), so a
  full walk leaves exactly the upstream's list and a tag deleted upstream goes away.
- Upstream down or misbehaving: the last known list is paged locally and marked stale (the
  handler adds ``Warning`` and ``P2preg-Last-Confirmed``), a warning is logged and
  ``on_stale_served("tag_list")`` counts it. Without a stored list the tags of the cached
  manifests stand in. With neither, the upstream's error is the answer.
- ``_catalog`` lists the repositories this node caches, in the names clients use: with
  ``?ns=R`` the repositories of ``R`` without the registry; without it Docker Hub's bare and every
  other registry's as ``<registry>/<repo>`` when that name routes back to it (a host with a dot
  and no port; the others are only reachable with ``?ns=``).

Must not import the handlers, gossip or fetch.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2preg.clock import Clock, WallClock
from p2preg.oci.errors import ErrorCode
from p2preg.oci.names import is_tag
from p2preg.pull.mirror import MirrorContentSource, cache_repository, current_namespace
from p2preg.registry.listing import Page, page_of
from p2preg.storage.metadata import MetadataStore
from p2preg.upstream.config import DOCKER_HUB, normalize_registry
from p2preg.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

TAGLISTS_DIR = "taglists"


@dataclass(frozen=True, slots=True)
class KnownTags:
    """A stored tag list and when the upstream last confirmed (part of) it."""

    tags: list[str]
    confirmed_at: float


class TagListStore:
    """The last known tag list of each mirrored repository, one small JSON file each.

    Files are written whole to a temporary name and renamed, so a crash leaves the old list or
    the new one. A file that cannot be read is treated as absent.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, cache_repo: str) -> Path:
        return self.directory / (hashlib.sha256(cache_repo.encode()).hexdigest() + ".json")

    def load(self, cache_repo: str) -> KnownTags | None:
        try:
            document = json.loads(self._path(cache_repo).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("repository") != cache_repo:
            return None
        tags, confirmed_at = document.get("tags"), document.get("confirmed_at")
        if not isinstance(tags, list) or not isinstance(confirmed_at, int | float):
            return None
        return KnownTags(sorted(t for t in tags if isinstance(t, str) and is_tag(t)),
                         float(confirmed_at))

    def save(self, cache_repo: str, known: KnownTags) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(cache_repo)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        body = {"repository": cache_repo, "tags": known.tags, "confirmed_at": known.confirmed_at}
        temporary.write_text(json.dumps(body))
        os.replace(temporary, path)

    def merge_page(
        self, cache_repo: str, last: str | None, page: list[str], complete: bool, now: float
    ) -> KnownTags:
        """Replace the stored tags in the range ``page`` covers (see the module docstring)."""
        stored = self.load(cache_repo)
        old = stored.tags if stored is not None else []
        lower = bisect.bisect_right(old, last) if last is not None else 0
        if complete:
            upper = len(old)
        else:
            end = max(page) if page else last
            upper = bisect.bisect_right(old, end) if end is not None else lower
        merged = sorted({*old[:lower], *page, *old[upper:]})
        known = KnownTags(merged, now)
        self.save(cache_repo, known)
        return known


def client_name(cache_repo: str, namespace: str | None) -> str | None:
    """The name a client uses for the cached ``cache_repo`` (None: not listed for this request)."""
    stored_registry, _, repository = cache_repo.partition("/")
    if not repository:
        return None
    registry = stored_registry.replace("__", ":")
    if namespace:
        return repository if registry == normalize_registry(namespace) else None
    if registry == DOCKER_HUB:
        return repository
    if "." in registry and ":" not in registry:
        return f"{registry}/{repository}"
    return None


class MirrorListing:
    """Tags through the upstream with a last known fallback; the catalog of the cache."""

    def __init__(
        self,
        mirror: MirrorContentSource,
        meta: MetadataStore,
        store: TagListStore,
        *,
        wall_clock: Clock | None = None,
        on_stale_served: Callable[[str], None] | None = None,
    ) -> None:
        self._mirror = mirror
        self._meta = meta
        self._store = store
        self._wall = wall_clock or WallClock()
        self._on_stale_served = on_stale_served or (lambda source: None)

    async def tags(self, repo: str, n: int | None, last: str | None) -> Page:
        config, upstream_repo = self._mirror.route(repo)
        cache_repo = cache_repository(config.registry, upstream_repo)
        if n == 0:
            return Page([], None, 0)
        client = self._mirror.upstream_client(config)
        try:
            fetched = await client.list_tags(upstream_repo, n, last)
        except UpstreamNotFound as exc:
            raise exc.to_registry_error(ErrorCode.NAME_UNKNOWN) from exc
        except (UpstreamUnavailable, UpstreamProtocolError) as exc:
            return self._last_known(cache_repo, n, last, exc)
        except UpstreamError as exc:
            raise exc.to_registry_error() from exc
        # Passed on in the upstream's order: ``last`` and its Link are in that order.
        await asyncio.to_thread(
            self._store.merge_page, cache_repo, last, fetched.tags, fetched.next_last is None,
            self._wall.now(),
        )
        return Page(list(fetched.tags), fetched.next_last, n)

    def _last_known(
        self, cache_repo: str, n: int | None, last: str | None, exc: UpstreamError
    ) -> Page:
        known = self._store.load(cache_repo)
        if known is None and self._meta.repository_exists(cache_repo):
            known = KnownTags(self._meta.tags(cache_repo), 0.0)
        if known is None:
            raise exc.to_registry_error() from exc
        log.warning("serving the last known tag list of %s (%d tags): %s", cache_repo,
                    len(known.tags), exc)
        self._on_stale_served("tag_list")
        page = page_of(known.tags, n, last)
        return Page(page.entries, page.next_last, page.link_n, known.confirmed_at)

    async def repositories(self, n: int | None, last: str | None) -> Page:
        namespace = current_namespace.get()
        names = sorted(
            {
                name
                for cache_repo in self._meta.repositories()
                if (name := client_name(cache_repo, namespace)) is not None
            }
        )
        return page_of(names, n, last)
