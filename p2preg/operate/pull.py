"""One node pulling an image into its cache as a client would, with progress: ``PullJobs``.

Owns: ``PullSpec`` (what to pull, for which platforms, when), ``PullProgress`` (the JSON shape
``GET /p2p/v1/pulls/<id>`` answers) and ``PullJobs`` (the node's pull jobs by id, run as tasks).

How a job pulls: through the node's own ``ContentSource`` (the seam the /v2 handlers use, so the
cache, the peers and the upstream are used exactly as for a client, and access times are
recorded): the manifest by tag or digest; for an index, the children of the named platforms
(all when none is named); then every distinct config and layer blob, three at a time, each read
to its end. A blob already committed counts as ``local`` bytes; the others count under the
source the content source names (``peer``, ``upstream``). ``counters`` are the node's own
data-plane counters (``p2preg_p2p_sent_bytes_total`` and ``p2preg_fill_received_bytes_total``)
since the job started, read when the job is shown: what this node uploaded to peers and
received from each kind of source since then (so uploads to peers still pulling after this node
finished count too; other traffic in that window counts as well).

With ``evict_first`` the image's blobs are deleted from the store when the request arrives
(before ``at``: the drops reach the peers through gossip meanwhile). States: ``scheduled`` ->
``pulling`` -> ``done`` | ``failed``. Times: ``at`` and
``started_at``/``finished_at`` are this node's wall clock; ``seconds`` is measured on its
monotonic clock from the instant the pull started.

Must not import aiohttp or the handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from p2preg.clock import Clock
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import RegistryError
from p2preg.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from p2preg.registry.content import ContentSource
from p2preg.storage.blobs import BlobStore

log = logging.getLogger(__name__)

ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
BLOB_CONCURRENCY = 3
MAX_JOBS_KEPT = 64
SOURCES = ("local", "peer", "upstream")

#: Reads the node's data-plane counters: {"uploaded", "from_peer", "from_upstream"}.
CounterReader = Callable[[], dict[str, float]]


@dataclass(frozen=True, slots=True)
class PullSpec:
    """Pull ``repository:reference`` (the name a client uses on this node) at wall time ``at``
    (None: now), for ``platforms`` (``os/arch[/variant]``; empty: all)."""

    repository: str
    reference: str
    platforms: tuple[str, ...] = ()
    at: float | None = None
    evict_first: bool = False


@dataclass
class PullProgress:
    id: str
    image: str
    state: str = "scheduled"
    error: str = ""
    blobs_total: int = 0
    blobs_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    counters: dict[str, int] = field(default_factory=dict)
    evicted_blobs: int = 0
    at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    counters_before: dict[str, float] | None = field(default=None, repr=False)

    def to_json(self, counters_now: dict[str, float] | None = None) -> dict[str, Any]:
        """The job as JSON; ``counters`` from ``counters_now`` once the job has started."""
        out = asdict(self)
        before = out.pop("counters_before")
        if before is not None and counters_now is not None:
            out["counters"] = {k: int(v - before.get(k, 0.0)) for k, v in counters_now.items()}
        return out


def _platform_of(entry: dict[str, Any]) -> str:
    p = entry.get("platform") or {}
    text = f"{p.get('os', '')}/{p.get('architecture', '')}"
    return f"{text}/{p['variant']}" if p.get("variant") else text


def _wanted(platform: str, platforms: Sequence[str]) -> bool:
    return not platforms or any(platform == p or platform.startswith(p + "/") for p in platforms)


class PullJobs:
    """This node's pull jobs, by id (the last ``MAX_JOBS_KEPT`` are kept)."""

    def __init__(self, content: ContentSource, blobs: BlobStore, *, wall_clock: Clock,
                 clock: Clock, counters: CounterReader,
                 on_evict: Callable[[str], None] = lambda digest: None) -> None:
        self._content = content
        self._blobs = blobs
        self._wall = wall_clock
        self._clock = clock
        self._counters = counters
        self._on_evict = on_evict
        self.jobs: dict[str, PullProgress] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, job_id: str, image: str, spec: PullSpec) -> PullProgress:
        """Start (or return the already started) job ``job_id``."""
        if job_id in self.jobs:
            return self.jobs[job_id]
        progress = PullProgress(id=job_id, image=image, at=spec.at)
        self.jobs[job_id] = progress
        while len(self.jobs) > MAX_JOBS_KEPT:
            oldest = next(iter(self.jobs))
            if oldest in self._tasks:
                break
            del self.jobs[oldest]
        task = asyncio.get_running_loop().create_task(self._run(progress, spec))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return progress

    def show(self, job_id: str) -> dict[str, Any] | None:
        """Job ``job_id`` as JSON, its counters read now; None when unknown."""
        progress = self.jobs.get(job_id)
        return None if progress is None else progress.to_json(self._counters())

    def active(self) -> list[PullProgress]:
        return [self.jobs[i] for i in self._tasks if i in self.jobs]

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, progress: PullProgress, spec: PullSpec) -> None:
        try:
            if spec.evict_first:  # before the start instant: gossip spreads the drops meanwhile
                progress.evicted_blobs = await self._evict(spec)
            if spec.at is not None:
                await self._wall.sleep(max(0.0, spec.at - self._wall.now()))
            progress.counters_before = self._counters()
            progress.state = "pulling"
            progress.started_at = self._wall.now()
            started = self._clock.now()
            try:
                await self._pull(progress, spec)
                progress.state = "done"
            except RegistryError as exc:
                progress.state, progress.error = "failed", f"{exc.code.name}: {exc.message}"
            except Exception as exc:  # a job's boundary: whatever broke, the job says so
                progress.state, progress.error = "failed", f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, OSError | ValueError | KeyError | TypeError):
                    log.exception("pull %s of %s failed", progress.id, progress.image)
            progress.seconds = round(self._clock.now() - started, 4)
            progress.finished_at = self._wall.now()
        except asyncio.CancelledError:
            progress.state, progress.error = "failed", "node stopping"
            raise
        log.info("pull %s of %s: %s in %ss (%s)", progress.id, progress.image, progress.state,
                 progress.seconds, progress.error or progress.bytes_by_source)

    async def _image_blobs(self, spec: PullSpec) -> list[tuple[Digest, int]]:
        top = await self._content.manifest(spec.repository, spec.reference, ACCEPT)
        manifests = [json.loads(top.body)]
        if top.media_type in INDEX_TYPES or "manifests" in manifests[0]:
            children = [m for m in manifests[0].get("manifests", [])
                        if _wanted(_platform_of(m), spec.platforms)]
            if not children:
                raise ValueError(f"no manifest for platform {', '.join(spec.platforms)}")
            manifests = []
            for child in children:
                got = await self._content.manifest(spec.repository, child["digest"], ACCEPT)
                manifests.append(json.loads(got.body))
        blobs: dict[str, int] = {}
        for manifest in manifests:
            for d in [manifest.get("config", {}), *manifest.get("layers", [])]:
                if "digest" in d:
                    blobs.setdefault(d["digest"], int(d.get("size", 0)))
        return [(parse_digest(d), size) for d, size in blobs.items()]

    async def _pull(self, progress: PullProgress, spec: PullSpec) -> None:
        blobs = await self._image_blobs(spec)
        progress.blobs_total = len(blobs)
        progress.bytes_total = sum(size for _, size in blobs)
        gate = asyncio.Semaphore(BLOB_CONCURRENCY)

        async def one(digest: Digest) -> None:
            async with gate:
                got = await self._content.blob(spec.repository, digest, None)
                if got.chunks is None:  # a committed file: no bytes need to move
                    progress.bytes_by_source["local"] += got.size
                    progress.bytes_done += got.size
                else:
                    source = got.source if got.source in SOURCES else "upstream"
                    async for chunk in got.chunks:
                        progress.bytes_by_source[source] += len(chunk)
                        progress.bytes_done += len(chunk)
                progress.blobs_done += 1

        await asyncio.gather(*(one(d) for d, _ in blobs))

    async def _evict(self, spec: PullSpec) -> int:
        """Delete the image's blobs from this node's store (``--evict-first``)."""
        evicted = 0
        for digest, _ in await self._image_blobs(spec):
            if await asyncio.to_thread(self._blobs.delete, digest):
                evicted += 1
                self._on_evict(str(digest))
        return evicted
