"""Garbage collection: remove the blobs and blob links nothing uses any more (registry mode).

Owns: ``collect_garbage``, ``collect_offline`` (``p2preg gc``: the same, on a store no node is
running on, under the data-dir lock), ``GcReport``, the reasons a blob is kept (``KEPT_*``) and
``GcIndex`` (the two read queries GC needs on the metadata). docs/storage.md ("Garbage
collection") is the operator's version of these rules:

- **Roots**: every stored manifest (tagged or not, in any repository) and everything a stored
  manifest references (config, layers, child manifests).
- A **blob link** ``(repo, digest)`` is live while a manifest of ``repo`` references the digest,
  or while ``repo`` is being pushed to: it has an upload session open, or a blob was linked into
  it less than ``grace_s`` ago (docker pushes every layer before the manifest that names them).
  A dead link is removed, so a repository whose manifests were all deleted leaves the catalog.
- A committed **blob** is garbage when it is no root, has no live link, was committed more than
  ``grace_s`` ago (the later of its mtime and its ctime: a re-commit touches the mtime, a hard
  link into place changes the ctime, so an upload finished a moment ago is young even if its
  bytes were written hours ago), no writer is producing it, and nobody read it within ``grace_s``
  (access times, including the ones still pending in the node's recorder: a client that checked
  ``HEAD`` on a layer before pushing a manifest that names it keeps the layer).
  Its links go first, then its file (so a row never names a missing file), then its access row.

How a pass stays safe while the node serves requests on the same event loop: the *mark* (a walk
of the blob directory and a few indexed queries per old blob) runs in a worker thread and only
proposes candidates; each candidate is judged again on the event loop, with the writers in
progress and the pending accesses, and acted upon with no ``await`` between that judgement and
the unlink/delete. A handler on the loop therefore sees the blob either before (and keeps it
alive by linking, referencing or reading it) or after (and treats it as unknown); never half-way.

Must not import aiohttp or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from p2preg.oci.digest import Digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.lock import DataDirLock
from p2preg.storage.metadata import MetadataStore

log = logging.getLogger(__name__)

YIELD_EVERY = 8  # blobs acted upon (each fsyncs SQLite and a directory) between two yields

KEPT_YOUNG = "young"  # committed less than grace_s ago
KEPT_WRITING = "writing"  # a writer is producing it right now
KEPT_READ = "recently_read"  # read (GET/HEAD) less than grace_s ago
KEPT_REFERENCED = "referenced"  # a root, or a live link

#: Reports the access time of ``digest`` not yet written to the database (the recorder's).
PendingAccess = Callable[[str], float | None]
#: Called once per blob deleted (or, in a dry run, that would be) with its digest and size.
OnDelete = Callable[[str, int], object]


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one collection did (in a dry run: would have done).

    ``examined``: committed blobs looked at; ``deleted``/``freed_bytes``: blobs removed and their
    bytes; ``links_removed``: dead links removed (with a deleted blob or alone); ``kept``: every
    blob examined and not deleted, by the reason that kept it; ``failed``: deletes that raised.
    """

    examined: int
    deleted: int
    freed_bytes: int
    links_removed: int = 0
    kept: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0


@dataclass(frozen=True, slots=True)
class LinkState:
    """One link of a blob and what keeps it alive."""

    repo: str
    linked_at: float
    repo_last_linked_at: float  # newest link of the repository: is it being pushed to?
    repo_has_upload: bool  # an upload session is open in the repository
    used_in_repo: bool  # a manifest of the repository references the digest

    def live(self, cutoff: float) -> bool:
        return self.used_in_repo or self.repo_has_upload or self.repo_last_linked_at > cutoff


class GcIndex:
    """The metadata queries of a GC pass, each one indexed read (``MetadataStore``'s lock).

    Both are ``MetadataStore`` queries (``manifest_rooted``, ``blob_link_states``).
    """

    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

    def rooted(self, digest: str) -> bool:
        """True when a manifest is stored as ``digest`` or references it, in any repository."""
        return self._meta.manifest_rooted(digest)

    def links(self, digest: str) -> list[LinkState]:
        """Every link of ``digest``, with its repository's activity, ordered by repository."""
        return [LinkState(*row) for row in self._meta.blob_link_states(digest)]


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What to do with one blob: delete it (``size`` bytes) and/or drop ``dead_links``."""

    delete: bool
    size: int
    dead_links: tuple[str, ...] = ()
    kept: str | None = None

    @property
    def actionable(self) -> bool:
        return self.delete or bool(self.dead_links)


class _Judge:
    """Decides about one blob. ``on_loop``: also consult the writers and pending accesses."""

    def __init__(
        self,
        blobs: BlobStore,
        meta: MetadataStore,
        cutoff: float,
        pending_access: PendingAccess | None,
    ) -> None:
        self.blobs = blobs
        self.meta = meta
        self.index = GcIndex(meta)
        self.cutoff = cutoff
        self.pending_access = pending_access

    def __call__(self, digest: Digest, *, on_loop: bool) -> _Verdict | None:
        """The verdict, or None when the blob is gone."""
        try:
            st = os.stat(self.blobs.layout.blob_path(digest))
        except FileNotFoundError:
            return None
        size = st.st_size
        if max(st.st_mtime, st.st_ctime) > self.cutoff:
            return _Verdict(False, size, kept=KEPT_YOUNG)
        if on_loop and self.blobs.in_progress(digest) is not None:
            return _Verdict(False, size, kept=KEPT_WRITING)
        key = str(digest)
        if self._read_recently(key, on_loop=on_loop):
            return _Verdict(False, size, kept=KEPT_READ)
        links = self.index.links(key)
        dead = tuple(link.repo for link in links if not link.live(self.cutoff))
        if len(dead) < len(links) or self.index.rooted(key):
            return _Verdict(False, size, dead_links=dead, kept=KEPT_REFERENCED)
        return _Verdict(True, size, dead_links=dead)

    def _read_recently(self, key: str, *, on_loop: bool) -> bool:
        recorded = self.meta.last_access(key)
        if recorded is not None and recorded > self.cutoff:
            return True
        if on_loop and self.pending_access is not None:
            pending = self.pending_access(key)
            return pending is not None and pending > self.cutoff
        return False


def _mark(judge: _Judge, kept: dict[str, int]) -> tuple[int, list[Digest]]:
    """Walk the store (worker thread): how many blobs, and the ones that look collectable.

    The blobs kept outright are counted in ``kept`` by reason.
    """
    examined = 0
    candidates: list[Digest] = []
    for digest in judge.blobs.digests():
        examined += 1
        verdict = judge(digest, on_loop=False)
        if verdict is None:
            continue
        if verdict.actionable:
            candidates.append(digest)
        elif verdict.kept is not None:
            kept[verdict.kept] = kept.get(verdict.kept, 0) + 1
    return examined, candidates


async def collect_garbage(
    blobs: BlobStore,
    meta: MetadataStore,
    *,
    now: float,
    grace_s: float = 3600.0,
    dry_run: bool = False,
    pending_access: PendingAccess | None = None,
    on_delete: OnDelete | None = None,
) -> GcReport:
    """Remove dead links and garbage blobs (see the module docstring); ``now`` is wall-clock.

    ``pending_access``: the recorder's not-yet-flushed access time of a digest (a node passes
    ``AccessRecorder.last_access``). ``on_delete(digest, size)`` is called after each blob
    deleted (in a dry run: each blob that would be); an exception from it is logged and ignored.
    A dry run changes nothing.
    """
    if grace_s < 0:
        raise ValueError("grace_s must be >= 0")
    judge = _Judge(blobs, meta, now - grace_s, pending_access)
    kept: dict[str, int] = {}
    examined, candidates = await asyncio.to_thread(_mark, judge, kept)
    deleted = freed = links_removed = failed = acted = 0
    for digest in candidates:
        # The second look and the action: no await in between (see the module docstring).
        verdict = judge(digest, on_loop=True)
        if verdict is None:
            continue
        if verdict.kept is not None:
            kept[verdict.kept] = kept.get(verdict.kept, 0) + 1
        if not verdict.actionable:
            continue
        if dry_run:
            links_removed += len(verdict.dead_links)
        else:
            for repo in verdict.dead_links:
                if meta.unlink_blob(repo, digest):
                    links_removed += 1
        outcome = (_DELETED if dry_run or not verdict.delete
                   else _delete(blobs, meta, digest, judge.cutoff))  # fmt: skip
        if outcome == _FAILED:
            failed += 1
        elif outcome == _YOUNG:  # re-committed since the verdict (an upload in a thread)
            kept[KEPT_YOUNG] = kept.get(KEPT_YOUNG, 0) + 1
        elif verdict.delete and outcome == _DELETED:
            deleted += 1
            freed += verdict.size
            if on_delete is not None:
                try:
                    on_delete(str(digest), verdict.size)
                except Exception:
                    log.exception("garbage collection: on_delete(%s) failed", digest)
        acted += 1
        if acted % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return GcReport(examined, deleted, freed, links_removed, kept, failed)


_DELETED, _GONE, _FAILED, _YOUNG = "deleted", "gone", "failed", "young"


def _delete(blobs: BlobStore, meta: MetadataStore, digest: Digest, cutoff: float) -> str:
    """Delete the file unless it was committed again after ``cutoff``, then its access row:
    ``_DELETED``, ``_YOUNG``, ``_GONE`` or ``_FAILED`` (logged)."""
    try:
        deleted = blobs.delete_if_older(digest, cutoff)
    except OSError as exc:
        log.warning("garbage collection could not delete %s: %s", digest, exc)
        return _FAILED
    if deleted is False:
        return _YOUNG
    meta.forget_access(digest)
    return _DELETED if deleted else _GONE


class NotADataDir(RuntimeError):
    """The directory holds no p2preg store (no metadata database)."""


async def collect_offline(
    layout: StoreLayout,
    *,
    now: float,
    grace_s: float,
    dry_run: bool = False,
    on_delete: OnDelete | None = None,
) -> GcReport:
    """Collect garbage in a store no node is running on (``p2preg gc``).

    Takes the data-dir lock for the whole run (raises ``DataDirLocked`` when a node holds it) so
    nothing can push meanwhile: ``grace_s = 0`` is safe here. Raises ``NotADataDir`` when
    ``layout.root`` has no metadata database (nothing is created then).
    """
    if not layout.db_path.is_file():
        raise NotADataDir(
            f"{layout.root} is not a p2preg data directory (no {layout.db_path.name})"
        )
    with DataDirLock(layout), MetadataStore(layout.db_path) as meta:
        blobs = BlobStore(layout)
        return await collect_garbage(
            blobs, meta, now=now, grace_s=grace_s, dry_run=dry_run, on_delete=on_delete
        )
