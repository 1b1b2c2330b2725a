"""The mirror ``ContentSource``: pull-through caching of upstream registries.

Owns: ``MirrorContentSource`` (manifests and blobs served from the local store when cached, else
fetched from the upstream the request names and cached on the way), ``UpstreamPool`` (one
``UpstreamClient`` per configured registry), ``current_namespace`` (containerd's
``?ns=<registry>``, set by ``registry.namespace.namespace_middleware``; absent means docker.io,
as Docker's ``registry-mirrors`` sends)
and ``cache_repository`` (where a mirrored repository lives in the local store:
``<registry>/<repo>``, with ``:`` in a registry's port written ``__``).

Rules:
- A tag is resolved against the upstream on every request (HEAD first: a moved tag is seen at
  once and an unchanged one costs no download). When the upstream is down or failing, the last
  known digest is served if it was confirmed within ``tag_max_stale_s``; a 404 from the upstream
  is never papered over. When it is slow or silent, a usable last known digest is served once
  the revalidation has taken ``tag_revalidate_s`` (from its start: a client joining a late
  revalidation is answered at once); the revalidation is a task of its own that goes on and
  records what the upstream says (one per tag per node at a time). Confirmations are kept in
  the metadata store (``confirm_tag``), at most ``confirm_persist_interval_s`` behind the one
  in memory, so they survive a restart.
- With no usable last known digest during an outage, the tag is asked of peers (``peer_tag``,
  set by the p2p layer: a few live peers' own confirmations, never their upstream): the freshest
  answer within ``tag_max_stale_s`` whose manifest a peer delivers verified by digest is served
  and recorded with the peer's confirmation time (never "now": staleness is not laundered). The
  whole lookup is bounded by ``peer_tag_budget_s`` and by what the upstream's retries left of
  ``OUTAGE_ANSWER_S`` (at least ``MIN_PEER_TAG_BUDGET_S``).
- Manifests by digest are immutable: once cached they are served without asking the upstream.
  Children of an index are fetched when a client asks for them. With peers (``peer_manifest``,
  set by the p2p layer) a manifest the node lacks comes from a peer that holds it before the
  upstream is asked, by digest and for a tag alike (the tag's HEAD names the digest): the
  upstream sees one manifest GET per cluster, not one per host (Docker Hub counts GETs against
  its pull rate limit, HEADs it does not), and manifests by digest still pull while the upstream
  is down. The peer's bytes are checked against the digest before they are stored or served.
  Every manifest stored is reported to ``on_manifest_stored`` (the p2p layer advertises it).
- Blobs: local hit -> the committed file; else one fill per digest per node (``BlobFetcher``)
  over ``[peers..., upstream]``, every concurrent client streaming the growing file from byte 0.
- Without ``?ns=``, a repository whose first component is a host name (``ghcr.io/org/app``) is
  routed to that registry (podman mirrors per registry); otherwise it is Docker Hub's.
- An unconfigured registry is ``NAME_UNKNOWN`` naming the configured ones; upstream failures
  are OCI errors naming the upstream and the cause.
- Tag lists and the catalog: ``mirrorlists.MirrorListing`` (``listing``, set by
  ``create_mirror``) passes ``tags/list`` through to the same upstream with a last known
  fallback and lists the cache under the names clients use.

Must not import the handlers, the p2p package or gossip (peers arrive as ``BlobSource``
callbacks from ``p2p.node_glue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Counter, Gauge

from p2preg.clock import Clock, MonotonicClock, WallClock
from p2preg.config import Config
from p2preg.fetch.reader import FollowedSpan
from p2preg.fetch.singleflight import BlobFetcher, Fill, FillError
from p2preg.fetch.sources import BlobSource, UpstreamBlobSource
from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.manifest import parse_manifest
from p2preg.oci.names import validate_name, validate_tag
from p2preg.registry.content import BlobContent, ManifestContent
from p2preg.registry.listing import Listing
from p2preg.registry.metrics import RegistryMetrics
from p2preg.registry.ranges import RangeSpec, resolve_range
from p2preg.registry.requestkeys import UPSTREAM_KEY
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore, TagConfirmation
from p2preg.upstream.client import MAX_MANIFEST_BYTES, FetchedManifest, UpstreamClient
from p2preg.upstream.config import (
    DOCKER_HUB,
    UpstreamConfig,
    Upstreams,
    normalize_registry,
    upstreams_from_config,
)
from p2preg.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

current_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "p2preg_mirror_namespace", default=None
)
"""The registry a request is for (``?ns=``), set by ``namespace_middleware``; None = docker.io."""

current_request: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar(
    "p2preg_mirror_request", default=None
)
"""The /v2 request being served (the access log is told which upstream served it)."""


def cache_repository(registry: str, repository: str) -> str:
    """The local repository name that caches ``registry``'s ``repository``."""
    return validate_name(f"{registry.replace(':', '__')}/{repository}")


class MirrorMetrics(Protocol):
    """What the mirror reports (``RegistryMetrics`` implements it)."""

    def upstream_request(self, registry: str, kind: str, status: int | str) -> None: ...

    def cache(self, hit: bool) -> None: ...


class _NoMetrics:
    def upstream_request(self, registry: str, kind: str, status: int | str) -> None:
        return None

    def cache(self, hit: bool) -> None:
        return None


class UpstreamPool:
    """One ``UpstreamClient`` per configured registry, created on first use."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: MirrorMetrics | None = None,
    ) -> None:
        self.upstreams = upstreams
        self._clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self._metrics = metrics or _NoMetrics()
        self._clients: dict[str, UpstreamClient] = {}

    def resolve(self, namespace: str | None) -> UpstreamConfig:
        """The upstream for ``namespace`` (None = docker.io), or ``NAME_UNKNOWN`` naming it."""
        registry = normalize_registry(namespace) if namespace else DOCKER_HUB
        config = self.upstreams.get(registry)
        if config is None:
            configured = ", ".join(self.upstreams.registries) or "none"
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN,
                f"registry {registry!r} is not an upstream of this mirror "
                f"(configured: {configured}); add --upstream {registry}=https://...",
                {"registry": registry, "configured": self.upstreams.registries},
            )
        return config

    def client(self, config: UpstreamConfig) -> UpstreamClient:
        client = self._clients.get(config.registry)
        if client is None:
            registry = config.registry
            client = UpstreamClient(
                config,
                clock=self._clock,
                rng=random.Random(self._rng.getrandbits(64)),
                observer=lambda kind, status: self._metrics.upstream_request(registry, kind,
                                                                             status),
            )
            self._clients[registry] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


#: ``peer_sources(digest, registry, repository)``: the peers to try before the upstream for a new
#: fill of ``digest`` (the upstream registry and repository let the digest's owner fill for us).
PeerSources = Callable[[Digest, str, str], Sequence[BlobSource]]
#: ``peer_manifest(digest, max_bytes)``: a peer's copy of a manifest, verified, or None.
PeerManifest = Callable[[Digest, int], Awaitable[bytes | None]]


class PeerTagAnswer(Protocol):
    """One peer's own last confirmation of a tag (``p2p.tags.TagAnswer`` implements it)."""

    @property
    def peer(self) -> str: ...

    @property
    def digest(self) -> Digest: ...

    @property
    def confirmed_at(self) -> float: ...


#: ``peer_tag(registry, repository, tag)``: what a few live peers last confirmed for the tag
#: (any order, possibly empty; never raises).
PeerTag = Callable[[str, str, str], Awaitable[Sequence[PeerTagAnswer]]]
#: Called with ``"local"`` or ``"peer"`` for every tag served during an upstream outage.
StaleObserver = Callable[[str], None]

DEFAULT_PEER_TAG_BUDGET_S = 2.0
#: A client waiting on a tag while the upstream is down gets an answer in about this long: the
#: peer lookup gets what the upstream's retries left of it (at least ``MIN_PEER_TAG_BUDGET_S``).
OUTAGE_ANSWER_S = 5.0
MIN_PEER_TAG_BUDGET_S = 0.5
#: With a last known digest at hand, a tag's revalidation gets this long before that digest is
#: served (the revalidation goes on in the background and records what the upstream says).
DEFAULT_TAG_REVALIDATE_S = 2.0
MAX_CONFIRM_PERSIST_INTERVAL_S = 60.0


class MirrorContentSource:
    """Pull-through ``ContentSource`` (see the module docstring for the rules)."""

    def __init__(
        self,
        blobs: BlobStore,
        meta: MetadataStore,
        pool: UpstreamPool,
        fetcher: BlobFetcher,
        *,
        tag_max_stale_s: float = 86400.0,
        wall_clock: Clock | None = None,
        metrics: MirrorMetrics | None = None,
        peer_sources: PeerSources | None = None,
        peer_tag_budget_s: float = DEFAULT_PEER_TAG_BUDGET_S,
        confirm_persist_interval_s: float | None = None,
        on_stale_served: StaleObserver | None = None,
        tag_revalidate_s: float = DEFAULT_TAG_REVALIDATE_S,
        clock: Clock | None = None,
    ) -> None:
        self._blobs = blobs
        self._meta = meta
        self._pool = pool
        self._fetcher = fetcher
        self._tag_max_stale_s = tag_max_stale_s
        self._wall = wall_clock or WallClock()
        self._metrics = metrics or _NoMetrics()
        self._peer_sources: PeerSources = peer_sources or (lambda digest, registry, repo: ())
        #: (digest, max bytes) -> the verified manifest body from a peer, or None (p2p sets it).
        self.peer_manifest: PeerManifest | None = None
        #: Called with the digest of every manifest stored (p2p: advertise ``have``).
        self.on_manifest_stored: Callable[[Digest], None] | None = None
        #: (registry, repository, tag) -> what live peers last confirmed (p2p sets it).
        self.peer_tag: PeerTag | None = None
        self._peer_tag_budget_s = peer_tag_budget_s
        self._persist_interval_s = (
            min(MAX_CONFIRM_PERSIST_INTERVAL_S, tag_max_stale_s / 10)
            if confirm_persist_interval_s is None else confirm_persist_interval_s)
        self._on_stale_served = on_stale_served or (lambda source: None)
        # (cache repo, tag) -> the newest confirmation seen, and when it was last written down
        self._confirmed: dict[tuple[str, str], TagConfirmation] = {}
        self._persisted_at: dict[tuple[str, str], float] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._refreshes: dict[tuple[str, str], asyncio.Future[ManifestContent]] = {}
        self._refresh_started: dict[tuple[str, str], float] = {}
        self._tag_revalidate_s = tag_revalidate_s
        self._clock = clock or MonotonicClock()
        self._background: set[asyncio.Task[None]] = set()
        #: Tag lists and the catalog through this mirror (``create_mirror`` sets it).
        self.listing: Listing | None = None
        self.stale_served_total = 0  # from the node's own last known digest or a peer's
        self.tags_from_peers_total = 0

    @property
    def fetcher(self) -> BlobFetcher:
        return self._fetcher

    @property
    def tag_refreshes(self) -> list[asyncio.Future[ManifestContent]]:
        """The tag revalidations still running in the background."""
        return list(self._refreshes.values())

    async def close(self) -> None:
        """Stop background work, the fills in progress and the upstream clients."""
        pending: list[asyncio.Future[Any]] = [*self._background, *self._inflight.values(),
                                              *self._refreshes.values()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._fetcher.close()
        await self._pool.close()

    def route(self, repo: str) -> tuple[UpstreamConfig, str]:
        """Which upstream serves ``repo`` and the repository name to ask it for.

        ``?ns=<registry>`` (containerd) names it. Without it, a first path component that is a
        host name (it has a dot: Docker Hub namespaces never do) names it, as podman sends with
        a mirror ``location = "<node>/ghcr.io"``; anything else is Docker Hub.
        """
        namespace = current_namespace.get()
        first, sep, rest = repo.partition("/")
        if namespace:
            routed = self._pool.resolve(namespace), repo
        elif sep and "." in first:
            routed = self._pool.resolve(first), rest
        else:
            routed = self._pool.resolve(None), repo
        request = current_request.get()
        if request is not None:
            request[UPSTREAM_KEY] = routed[0].registry  # the access log names the upstream
        return routed

    def upstream_client(self, config: UpstreamConfig) -> UpstreamClient:
        """The client of the upstream ``config`` (for ``mirrorlists``: tag lists)."""
        return self._pool.client(config)

    # -- manifests -------------------------------------------------------------------------------

    async def manifest(
        self, repo: str, reference: str, accept: Sequence[str]
    ) -> ManifestContent:
        config, repo = self.route(repo)
        cache_repo = cache_repository(config.registry, repo)
        client = self._pool.client(config)
        if ":" in reference:
            digest = parse_digest(reference)
            cached = await self._cached_manifest(cache_repo, digest)
            if cached is not None:
                self._metrics.cache(True)
                return cached
            self._metrics.cache(False)
            return await self._once(
                (cache_repo, reference),
                lambda: self._manifest_by_digest(client, repo, cache_repo, digest),
            )
        return await self._once(
            (cache_repo, "tag:" + reference),
            lambda: self._manifest_by_tag(client, repo, cache_repo, reference),
        )

    async def _manifest_by_tag(
        self, client: UpstreamClient, repo: str, cache_repo: str, tag: str
    ) -> ManifestContent:
        started = asyncio.get_running_loop().time()
        usable = self._fresh_confirmation(cache_repo, tag) is not None
        refresh = self._refresh(client, repo, cache_repo, tag)
        try:
            if not usable:
                return await asyncio.shield(refresh)
            # A last known digest may be ready: the upstream gets until the revalidation deadline
            # (counted from when this refresh started, so a client arriving during a refresh that
            # is already late gets its answer at once); the refresh goes on in the background.
            # The last known manifest is read (and verified) only when it is served: a prompt
            # upstream reads the cached manifest once, in the refresh.
            late_by = self._tag_revalidate_s - (self._clock.now() - self._refresh_started[
                (cache_repo, tag)])
            done, _ = await asyncio.wait({refresh}, timeout=max(0.0, late_by))
            if refresh in done:
                return refresh.result()
            stale = await self._stale_tag(cache_repo, tag)
            if stale is None:  # its manifest is gone (or was rotten): wait for the upstream
                return await asyncio.shield(refresh)
            log.warning("serving %s:%s as last known %s: upstream %s did not answer within "
                        "%.1fs (still asking in the background)", cache_repo, tag,
                        stale.digest, client.config.registry, self._tag_revalidate_s)
            self._stale_served("local")
            return stale
        except UpstreamNotFound as exc:
            raise exc.to_registry_error(ErrorCode.MANIFEST_UNKNOWN) from exc
        except (UpstreamUnavailable, UpstreamProtocolError) as exc:
            stale = await self._stale_tag(cache_repo, tag)
            if stale is not None:
                log.warning("serving %s:%s as last known %s: %s", cache_repo, tag, stale.digest,
                            exc)
                self._stale_served("local")
                return stale
            spent = asyncio.get_running_loop().time() - started
            budget = min(self._peer_tag_budget_s,
                         max(MIN_PEER_TAG_BUDGET_S, OUTAGE_ANSWER_S - 0.5 - spent))
            from_peer = await self._tag_from_peers(client.config.registry, repo, cache_repo, tag,
                                                   exc, budget)
            if from_peer is None:
                raise exc.to_registry_error() from exc
            self.tags_from_peers_total += 1
            self._stale_served("peer")
            return from_peer
        except UpstreamError as exc:
            raise exc.to_registry_error() from exc

    def _refresh(
        self, client: UpstreamClient, repo: str, cache_repo: str, tag: str
    ) -> asyncio.Future[ManifestContent]:
        """The revalidation of ``tag`` against the upstream in progress, or a new one: a task of
        its own, so it finishes (and records what the upstream said) after the client that
        started it got the last known digest."""
        key = (cache_repo, tag)
        task = self._refreshes.get(key)
        if task is not None:
            return task
        task = asyncio.ensure_future(self._revalidate_tag(client, repo, cache_repo, tag))
        self._refreshes[key] = task
        self._refresh_started[key] = self._clock.now()

        def forget(fut: asyncio.Future[ManifestContent]) -> None:
            if self._refreshes.get(key) is fut:
                del self._refreshes[key]
                self._refresh_started.pop(key, None)
            if not fut.cancelled() and fut.exception() is not None:
                log.debug("refresh of %s:%s: %s", cache_repo, tag, fut.exception())

        task.add_done_callback(forget)
        return task

    async def _revalidate_tag(
        self, client: UpstreamClient, repo: str, cache_repo: str, tag: str
    ) -> ManifestContent:
        """Ask the upstream what ``tag`` is now (HEAD first) and make sure its manifest is here.
        Upstream errors are raised as they are (the caller chooses the fallback)."""
        head = await client.head_manifest(repo, tag)
        if head.digest is not None:
            cached = await self._cached_manifest(cache_repo, head.digest)
            if cached is not None:
                if self._meta.resolve_tag(cache_repo, tag) != str(head.digest):
                    self._meta.put_manifest(cache_repo, str(head.digest), cached.media_type,
                                            len(cached.body), tag=tag)
                self._confirm(cache_repo, tag, head.digest, self._wall.now())
                self._metrics.cache(True)
                return cached
        self._metrics.cache(False)
        if head.digest is not None:
            from_peer = await self._from_peers(cache_repo, head.digest, tag)
            if from_peer is not None:
                self._confirm(cache_repo, tag, head.digest, self._wall.now())
                return from_peer
        return await self._fetch_manifest(client, repo, cache_repo, tag, tag)

    async def _manifest_by_digest(
        self, client: UpstreamClient, repo: str, cache_repo: str, digest: Digest
    ) -> ManifestContent:
        from_peer = await self._from_peers(cache_repo, digest, None)
        if from_peer is not None:
            return from_peer
        return await self._fetch_manifest(client, repo, cache_repo, str(digest), None)

    async def _from_peers(
        self, cache_repo: str, digest: Digest, tag: str | None
    ) -> ManifestContent | None:
        """The manifest from a peer that holds it (verified by the p2p layer), stored; or None."""
        if self.peer_manifest is None:
            return None
        body = await self.peer_manifest(digest, MAX_MANIFEST_BYTES)
        if body is None:
            return None
        fetched = FetchedManifest(digest, mediatypes.of_manifest_body(body), body)
        await self._store_manifest(cache_repo, fetched, tag)
        return ManifestContent(fetched.media_type, digest, body)

    async def _fetch_manifest(
        self, client: UpstreamClient, repo: str, cache_repo: str, reference: str, tag: str | None
    ) -> ManifestContent:
        try:
            fetched = await client.get_manifest(repo, reference)
        except UpstreamNotFound as exc:
            raise exc.to_registry_error(ErrorCode.MANIFEST_UNKNOWN) from exc
        except UpstreamError as exc:
            if tag is not None and isinstance(exc, UpstreamUnavailable | UpstreamProtocolError):
                raise  # the tag path falls back to the last known digest
            raise exc.to_registry_error() from exc
        await self._store_manifest(cache_repo, fetched, tag)
        if tag is not None:
            self._confirm(cache_repo, tag, fetched.digest, self._wall.now())
        return ManifestContent(fetched.media_type, fetched.digest, fetched.body)

    async def _store_manifest(
        self, cache_repo: str, fetched: FetchedManifest, tag: str | None
    ) -> None:
        await self._blobs.put_bytes(fetched.body, fetched.digest)
        if self.on_manifest_stored is not None:
            self.on_manifest_stored(fetched.digest)
        references: list[str] = []
        subject = artifact_type = None
        annotations: dict[str, str] | None = None
        try:
            parsed = parse_manifest(fetched.body, fetched.media_type,
                                    algorithm=fetched.digest.algorithm)
        except RegistryError:
            pass  # cached as the upstream sent it; the client judges it
        else:
            references = [str(d.digest) for d in
                          [*parsed.blob_references(), *parsed.manifest_references()]]
            subject = None if parsed.subject is None else str(parsed.subject.digest)
            artifact_type = parsed.artifact_type
            annotations = None if parsed.annotations is None else dict(parsed.annotations)
        self._meta.put_manifest(
            cache_repo, str(fetched.digest), fetched.media_type, len(fetched.body), tag=tag,
            subject=subject, artifact_type=artifact_type, annotations=annotations,
            references=references,
        )

    async def _cached_manifest(self, cache_repo: str, digest: Digest) -> ManifestContent | None:
        record = self._meta.get_manifest(cache_repo, str(digest))
        if record is None or not self._blobs.has(digest):
            return None
        try:
            body = await self._blobs.read_verified(digest)  # quarantined when rotten: refetched
        except (FileNotFoundError, RegistryError):
            return None
        return ManifestContent(record.media_type, digest, body)

    async def _stale_tag(self, cache_repo: str, tag: str) -> ManifestContent | None:
        confirmation = self._fresh_confirmation(cache_repo, tag)
        if confirmation is None:
            return None
        return await self._cached_manifest(cache_repo, parse_digest(confirmation.digest))

    def _fresh_confirmation(self, cache_repo: str, tag: str) -> TagConfirmation | None:
        """The last confirmation of the tag when still within ``tag_max_stale_s``."""
        confirmation = self._last_confirmation(cache_repo, tag)
        if confirmation is None or not self._fresh(confirmation.confirmed_at):
            return None
        return confirmation

    def _fresh(self, confirmed_at: float) -> bool:
        return self._wall.now() - confirmed_at <= self._tag_max_stale_s

    def _stale_served(self, source: str) -> None:
        self.stale_served_total += 1
        self._metrics.cache(True)
        self._on_stale_served(source)

    # -- tag confirmations -----------------------------------------------------------------------

    def last_confirmed(self, registry: str, repository: str, tag: str) -> TagConfirmation | None:
        """This node's own last confirmation of ``registry``'s ``repository:tag`` (what the peer
        endpoint answers), or None. Raises ``NAME_INVALID``/``TAG_INVALID`` for bad input."""
        validate_tag(tag)
        return self._last_confirmation(
            cache_repository(normalize_registry(registry), validate_name(repository)), tag)

    def _last_confirmation(self, cache_repo: str, tag: str) -> TagConfirmation | None:
        """The stored confirmation, or the newer one in memory when it names the same digest."""
        stored = self._meta.tag_confirmation(cache_repo, tag)
        seen = self._confirmed.get((cache_repo, tag))
        if stored is None or seen is None or seen.digest != stored.digest:
            return stored
        return seen if seen.confirmed_at > stored.confirmed_at else stored

    def _confirm(self, cache_repo: str, tag: str, digest: Digest, confirmed_at: float) -> None:
        """Remember that ``tag`` pointed at ``digest`` at ``confirmed_at``; write it down when
        the digest changed or the stored one is ``confirm_persist_interval_s`` old."""
        key = (cache_repo, tag)
        confirmation = TagConfirmation(str(digest), confirmed_at)
        previous = self._confirmed.get(key)
        if previous is not None and previous.digest == confirmation.digest \
                and previous.confirmed_at >= confirmed_at:
            return
        self._confirmed[key] = confirmation
        persisted = self._persisted_at.get(key)
        if previous is not None and previous.digest == confirmation.digest \
                and persisted is not None and confirmed_at - persisted < self._persist_interval_s:
            return
        try:
            self._meta.confirm_tag(cache_repo, tag, digest, confirmed_at)
        except sqlite3.Error as exc:  # the pull goes on; a restart may refuse the tag sooner
            log.warning("could not record the confirmation of %s:%s: %s", cache_repo, tag, exc)
            return
        self._persisted_at[key] = confirmed_at

    async def _tag_from_peers(
        self, registry: str, repo: str, cache_repo: str, tag: str, cause: UpstreamError,
        budget_s: float,
    ) -> ManifestContent | None:
        """The tag as live peers last confirmed it, its manifest from a peer (verified) or the
        cache; stored and recorded with the peer's confirmation time. None when no peer knew a
        fresh enough digest, none delivered its manifest, or ``budget_s`` ran out."""
        if self.peer_tag is None:
            return None
        try:
            async with asyncio.timeout(budget_s):
                found = await self._peer_tag_manifest(registry, repo, cache_repo, tag)
        except TimeoutError:
            log.warning("asking peers for %s:%s took over %.1fs: giving up", cache_repo, tag,
                        budget_s)
            return None
        if found is None:
            log.info("no peer knows %s:%s within %.0fs; upstream: %s", cache_repo, tag,
                     self._tag_max_stale_s, cause)
            return None
        answer, content, from_peer = found
        if from_peer:
            fetched = FetchedManifest(content.digest, content.media_type, content.body)
            await self._store_manifest(cache_repo, fetched, tag)
        confirmed_at = min(answer.confirmed_at, self._wall.now())
        self._confirm(cache_repo, tag, content.digest, confirmed_at)
        log.warning("serving %s:%s as %s, confirmed by peer %s %.0fs ago: %s", cache_repo, tag,
                    content.digest, answer.peer, self._wall.now() - confirmed_at, cause)
        return content

    async def _peer_tag_manifest(
        self, registry: str, repo: str, cache_repo: str, tag: str
    ) -> tuple[PeerTagAnswer, ManifestContent, bool] | None:
        """The freshest usable answer, its manifest, and whether the manifest came from a peer
        (False: it was cached here already)."""
        assert self.peer_tag is not None
        answers = await self.peer_tag(registry, repo, tag)
        fresh = sorted((a for a in answers if self._fresh(a.confirmed_at)),
                       key=lambda a: -a.confirmed_at)
        tried: set[Digest] = set()
        for answer in fresh:
            if answer.digest in tried:
                continue
            tried.add(answer.digest)
            cached = await self._cached_manifest(cache_repo, answer.digest)
            if cached is not None:
                return answer, cached, False
            if self.peer_manifest is None:
                continue
            body = await self.peer_manifest(answer.digest, MAX_MANIFEST_BYTES)
            if body is None:
                log.warning("peer %s named %s for %s:%s, but no peer delivered that manifest",
                            answer.peer, answer.digest, cache_repo, tag)
                continue
            media_type = mediatypes.of_manifest_body(body)
            return answer, ManifestContent(media_type, answer.digest, body), True
        return None

    async def _once(
        self, key: tuple[str, str], make: Callable[[], Coroutine[Any, Any, T]]
    ) -> T:
        """Run ``make()`` once for concurrent callers with the same ``key``."""
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(make())
            self._inflight[key] = pending

            def forget(fut: asyncio.Future[Any], key: tuple[str, str] = key) -> None:
                if self._inflight.get(key) is fut:
                    del self._inflight[key]
                if not fut.cancelled():
                    fut.exception()

            pending.add_done_callback(forget)
        result: T = await asyncio.shield(pending)
        return result

    # -- blobs -----------------------------------------------------------------------------------

    async def blob(
        self,
        repo: str,
        digest: Digest,
        byte_range: RangeSpec | None,
        *,
        want_body: bool = True,
    ) -> BlobContent:
        config, repo = self.route(repo)
        cache_repo = cache_repository(config.registry, repo)
        size = self._blobs.size(digest)
        if size is not None:
            self._metrics.cache(True)
            resolved = None if byte_range is None else resolve_range(byte_range, size)
            return BlobContent(digest, size, resolved,
                               path=self._blobs.path(digest) if want_body else None,
                               source="local")
        client = self._pool.client(config)
        fill = self._fetcher.in_flight(digest)
        if fill is None and not want_body:
            return await self._head_uncached(client, repo, digest, byte_range)
        self._metrics.cache(False)
        if fill is None:
            sources = [*self._peer_sources(digest, config.registry, repo),
                       UpstreamBlobSource(client, repo)]
            fill = self._fetcher.fill(digest, sources)
            self._spawn(self._link_when_done(fill, cache_repo))
        try:
            total = await fill.ready()
            if total is None:  # no source said the size: serve it once it is complete
                await fill.wait()
                return await self.blob(repo, digest, byte_range, want_body=want_body)
        except FillError as exc:
            raise exc.to_registry_error() from exc
        resolved = None if byte_range is None else resolve_range(byte_range, total)
        source = fill.source_kind or "upstream"
        if not want_body:
            return BlobContent(digest, total, resolved, source=source)
        start, end = (0, total) if resolved is None else (resolved.start, resolved.end + 1)
        span = FollowedSpan(fill, start, end)
        return BlobContent(digest, total, resolved, chunks=span.chunks(), source=source,
                           growing=span)

    async def _head_uncached(
        self, client: UpstreamClient, repo: str, digest: Digest, byte_range: RangeSpec | None
    ) -> BlobContent:
        """HEAD of a blob not cached: ask the upstream for its size, download nothing."""
        try:
            size = await client.head_blob(repo, digest)
        except UpstreamNotFound as exc:
            raise exc.to_registry_error(ErrorCode.BLOB_UNKNOWN) from exc
        except UpstreamError as exc:
            raise exc.to_registry_error() from exc
        if size is None:
            raise RegistryError(ErrorCode.UPSTREAM_ERROR,
                                f"upstream {client.config.registry} gave no size for {digest}")
        resolved = None if byte_range is None else resolve_range(byte_range, size)
        return BlobContent(digest, size, resolved, source="upstream")

    async def _link_when_done(self, fill: Fill, cache_repo: str) -> None:
        try:
            await fill.wait()
        except FillError:
            return
        size = self._blobs.size(fill.digest)
        if size is not None:
            self._meta.link_blob(cache_repo, fill.digest, size)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def create_mirror(
    config: Config,
    blobs: BlobStore,
    meta: MetadataStore,
    *,
    metrics: RegistryMetrics | None = None,
    clock: Clock | None = None,
    wall_clock: Clock | None = None,
    rng: random.Random | None = None,
    peer_sources: PeerSources | None = None,
) -> MirrorContentSource:
    """The node's mirror from its ``Config`` (``--upstream``, ``--upstream-ca``,
    ``--docker-config``, ``--upstream-timeout-s``, ``--tag-max-stale-s``).

    With ``metrics``, upstream requests and cache lookups are counted there and fills are
    counted as ``p2preg_blob_fills_total{source, outcome}`` (``ok``, ``wrong_bytes``,
    ``failed``; the running ones as ``p2preg_blob_fills_in_progress``) and tags served
    during an outage as ``p2preg_stale_tags_served_total{source="local|peer"}``. Raises
    ``UpstreamConfigError`` for a bad upstream setting. Call ``close()`` at shutdown.
    """
    observer = None
    if metrics is not None:
        fills = Counter(
            "p2preg_blob_fills_total",
            "Blob fills from peers or upstreams, by the last source and the outcome "
            "(ok, wrong_bytes: content did not match its digest, failed).",
            ["source", "outcome"],
            registry=metrics.registry,
        )
        for outcome in ("ok", "wrong_bytes", "failed"):
            fills.labels(source="upstream", outcome=outcome)

        def observer(source: str, outcome: str) -> None:
            fills.labels(source=source if source in ("upstream", "peer") else "other",
                         outcome=outcome).inc()

    on_stale_served: StaleObserver | None = None
    if metrics is not None:
        stale = Counter(
            "p2preg_stale_tags_served_total",
            "Tags answered while their upstream was down, by where the digest came from "
            "(local: this node's last confirmation; peer: a peer's; tag_list: a tags/list "
            "answered from the last known list).",
            ["source"],
            registry=metrics.registry,
        )
        for source in ("local", "peer", "tag_list"):
            stale.labels(source=source)

        def on_stale_served(source: str) -> None:
            stale.labels(source=source).inc()

    pool = UpstreamPool(upstreams_from_config(config), clock=clock, rng=rng, metrics=metrics)
    fetcher = BlobFetcher(blobs, clock=clock, observer=observer,
                          received=metrics.fill_bytes_received if metrics is not None else None)
    if metrics is not None:
        in_progress = Gauge(
            "p2preg_blob_fills_in_progress",
            "Blob fills running on this node now (from peers or an upstream).",
            registry=metrics.registry,
        )
        in_progress.set_function(lambda: len(fetcher.fills_in_flight()))
    mirror = MirrorContentSource(
        blobs, meta, pool, fetcher,
        tag_max_stale_s=config.tag_max_stale_s,
        wall_clock=wall_clock,
        metrics=metrics,
        peer_sources=peer_sources,
        on_stale_served=on_stale_served,
        tag_revalidate_s=config.tag_revalidate_s,
        clock=clock,
    )
    # Imported here: mirrorlists builds on this module (route, cache names, the namespace).
    from p2preg.registry.mirrorlists import TAGLISTS_DIR, MirrorListing, TagListStore

    mirror.listing = MirrorListing(
        mirror, meta, TagListStore(Path(config.data_dir) / TAGLISTS_DIR),
        wall_clock=wall_clock, on_stale_served=on_stale_served,
    )
    return mirror
