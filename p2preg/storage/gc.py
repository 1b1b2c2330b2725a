"""Garbage collection: delete committed blobs that nothing references any more.

Owns: ``collect_garbage`` and ``GcReport``. A blob is garbage when no repository links it, no
repository stores it as a manifest, no stored manifest references it, no writer is producing it, and
it is older than a grace period (so a blob committed a moment ago and about to be linked is safe;
re-committing an existing blob refreshes its mtime for the same reason). Each blob's check and
delete run without yielding to the event loop in between, so a request handled on the same loop
cannot link the blob in the middle.

This is a plain mark-and-sweep over the blob directory; size-based eviction (LRU under a quota)
is a separate policy built on ``MetadataStore.least_recently_used``.
Must not import aiohttp or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore

YIELD_EVERY = 256  # blobs examined between two yields to the event loop


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one collection did."""

    examined: int
    deleted: int
    freed_bytes: int


async def collect_garbage(
    blobs: BlobStore,
    meta: MetadataStore,
    *,
    now: float,
    grace_s: float = 3600.0,
    dry_run: bool = False,
) -> GcReport:
    """Delete unreferenced blobs older than ``grace_s`` (``now`` is wall-clock seconds)."""
    examined = deleted = freed = 0
    for digest in list(blobs.digests()):
        examined += 1
        if examined % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        mtime = blobs.mtime(digest)
        if mtime is None or mtime > now - grace_s:
            continue
        if blobs.in_progress(digest) is not None or meta.blob_referenced(digest):
            continue
        size = blobs.size(digest) or 0
        if not dry_run:
            if not blobs.delete(digest):
                continue
            meta.forget_access(digest)
        deleted += 1
        freed += size
    return GcReport(examined, deleted, freed)
