"""The node's status page (``GET /ui``; ``GET /`` redirects there) and the JSON it reads
(``GET /_p2preg/v1/status``, ``GET /_p2preg/v1/cache``), served on the ``/v2`` listener.

Owns: ``StatusSources`` (what the page reads from a running node), the two JSON documents
(``status_document``, ``cache_document``; their fields are documented in docs/api.md) and
``status_routes``. The page is one file, ``ui.html`` (inline CSS, JS and SVG; nothing from
outside the node), served as it is.

Shown: this node (name, mode), members (status, zone, RTT, network coordinates), fills in
progress (digest, size, bytes received, source kind), uploads to peers in progress (digest, peer,
bytes sent, seconds), this node's pull jobs, the byte counters
(served by source, received by source, sent to peers), cache hits and misses, and the cache
(images by repository and tag, blobs by size and last use). Never shown: keys, credentials,
upstream URLs, configuration. The routes are read-only and pass through the /v2 auth middleware
like every path outside ``/metrics``, ``/healthz`` and ``/p2p/``: with ``--htpasswd`` the
browser asks for the same login as ``/v2/``.

Must not import the mirror or the p2p server; every source comes in through ``StatusSources``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from p2preg.clock import Clock
from p2preg.fetch.singleflight import BlobFetcher
from p2preg.operate.pull import PullJobs
from p2preg.operate.uploads import UploadTracker
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore

UI_PATH = "/ui"
STATUS_PATH = "/_p2preg/v1/status"
CACHE_PATH = "/_p2preg/v1/cache"
MAX_BLOBS = 500
MAX_IMAGES = 200
_SOURCES = ("local", "peer", "upstream")


@dataclass
class StatusSources:
    """What the status page reads; ``gossip`` and ``fetcher`` are None when the node has none."""

    node_name: str
    mode: str
    blobs: BlobStore
    meta: MetadataStore
    metrics: CollectorRegistry
    wall_clock: Clock
    gossip: Any = None  # GossipService
    fetcher: Callable[[], BlobFetcher | None] = lambda: None
    pulls: PullJobs | None = None
    uploads: UploadTracker | None = None


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def byte_counters(registry: CollectorRegistry) -> dict[str, Any]:
    hits = _sample(registry, "p2preg_cache_requests_total", result="hit")
    misses = _sample(registry, "p2preg_cache_requests_total", result="miss")
    served = {s: int(_sample(registry, "p2preg_blob_bytes_served_total", source=s))
              for s in _SOURCES}
    return {
        "served_bytes_by_source": served,
        "received_bytes_by_source": {
            s: int(_sample(registry, "p2preg_fill_received_bytes_total", source=s))
            for s in ("peer", "upstream")},
        "sent_to_peers_bytes": int(_sample(registry, "p2preg_p2p_sent_bytes_total")),
        "cache_hits": int(hits),
        "cache_misses": int(misses),
        "hit_ratio": None if hits + misses == 0 else round(hits / (hits + misses), 4),
    }


def _members(gossip: Any) -> list[dict[str, Any]]:
    from p2preg.gossip.http import member_to_json

    coords = gossip.coordinates()
    out = []
    for member in sorted(gossip.members(), key=lambda m: m.name):
        row = member_to_json(member)
        row.pop("meta", None)
        coord = coords.get(member.name)
        row["coordinate"] = None if coord is None else {
            "vec": [round(v * 1000.0, 4) for v in coord.vec],  # milliseconds
            "height_ms": round(coord.height * 1000.0, 4),
            "error": round(coord.error, 4),
        }
        out.append(row)
    return out


def status_document(src: StatusSources) -> dict[str, Any]:
    """The answer of ``GET /_p2preg/v1/status`` (fields in docs/api.md)."""
    fetcher = src.fetcher()
    fills = []
    if fetcher is not None:
        for fill in fetcher.fills_in_flight():
            fills.append({"digest": str(fill.digest), "size": fill.size,
                          "received": fill.received, "source": fill.source_kind})
    pulls = [p.to_json() for p in src.pulls.active()] if src.pulls is not None else []
    return {
        "node": {"name": src.node_name, "mode": src.mode, "time": src.wall_clock.now()},
        "members": _members(src.gossip) if src.gossip is not None else [],
        "fills": sorted(fills, key=lambda f: f["digest"]),
        "uploads": src.uploads.active() if src.uploads is not None else [],
        "pulls": pulls,
        "bytes": byte_counters(src.metrics),
        "store": {"blobs": src.blobs.count(), "bytes": src.blobs.total_bytes()},
    }


def cache_document(src: StatusSources) -> dict[str, Any]:
    """The answer of ``GET /_p2preg/v1/cache``: images and the most recently used blobs."""
    images = []
    for repo in src.meta.repositories(n=MAX_IMAGES):
        for tag in src.meta.tags(repo, n=20):
            digest = src.meta.resolve_tag(repo, tag)
            images.append({"repository": repo, "tag": tag, "digest": digest,
                           "last_used": None if digest is None else src.meta.last_access(digest)})
            if len(images) >= MAX_IMAGES:
                break
    blobs: list[dict[str, Any]] = []
    for blob in src.blobs.digests():
        blobs.append({"digest": str(blob), "size": src.blobs.size(blob),
                      "last_used": src.meta.last_access(blob)})
        if len(blobs) >= 10 * MAX_BLOBS:
            break
    blobs.sort(key=lambda b: -(b["last_used"] or 0.0))
    return {"images": images, "blobs": blobs[:MAX_BLOBS], "blobs_total": src.blobs.count(),
            "bytes_total": src.blobs.total_bytes()}


def _page() -> bytes:
    return resources.files("p2preg.operate").joinpath("ui.html").read_bytes()


def status_routes(src: StatusSources) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    page = _page()
    no_store = {"Cache-Control": "no-store"}

    @routes.get("/")
    async def root(request: web.Request) -> web.Response:
        # An operator opening http://localhost:PORT/ in a browser lands on the page.
        raise web.HTTPFound(UI_PATH, headers=no_store)

    @routes.get(UI_PATH)
    async def ui(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers={
            **no_store, "Content-Security-Policy": "default-src 'self'; script-src "
            "'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            "X-Content-Type-Options": "nosniff"})

    @routes.get(STATUS_PATH)
    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(src), headers=no_store)

    @routes.get(CACHE_PATH)
    async def cache(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(cache_document, src), headers=no_store)

    return routes
