"""Blob upload sessions: resumable, chunked, crash-safe pushes.

Owns: ``UploadManager`` (create / append / finish / cancel / expire / recover) and the files under
``uploads/<uuid>/``. A session's durable state is the pair (``uploads`` row, data file): the row's
``offset`` counts bytes that were fsync'ed *before* the row was updated, so after a crash the data
file is at least that long and is truncated back to it; a session whose file is missing or short is
dropped (the client restarts the upload). Each append is all or nothing: a chunk that fails half-way
(client gone, disk error) is cut off again and the offset stays where it was.

The sha256 of the data is computed while it is appended (off the event loop, in 1 MiB batches), so
finishing a multi-GiB upload does not read it back; after a restart the prefix is re-hashed once.

Open sessions are capped per node (``max_sessions``) and per owner (``max_sessions_per_owner``:
the client's user name or address, given to ``create``); beyond either, ``create`` raises
``TOOMANYREQUESTS`` (429, ``Retry-After``) and nothing is written. Sessions recovered after a
restart count towards the node's cap only (their owner is not stored).

Must not import aiohttp or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import uuid as uuidlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from p2preg.clock import Clock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.diskspace import storage_error
from p2preg.storage.layout import StoreLayout, fsync_dir, is_upload_uuid
from p2preg.storage.metadata import MetadataStore, UploadRecord
from p2preg.storage.sink import DEFAULT_FLUSH_BYTES, HashingSink, settle

_INCREMENTAL_ALGORITHM = "sha256"
RETRY_AFTER_S = 60
"""What a client refused for too many open sessions is told to wait (they expire or finish)."""


@dataclass(frozen=True, slots=True)
class UploadRecovery:
    """What ``UploadManager.recover`` did."""

    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    orphans_removed: int = 0


@dataclass
class _Session:
    """In-memory companion of a session: serialises its appends and carries its running hash."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hasher: hashlib._Hash | None = None
    hashed: int = 0  # bytes covered by ``hasher``


def range_header(offset: int) -> str:
    """The ``Range`` header value for a session holding ``offset`` bytes (``0-0`` when empty)."""
    return f"0-{max(offset - 1, 0)}"


def _too_many(message: str, detail: dict[str, int]) -> RegistryError:
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS, message, detail, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _unknown(uuid: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, detail={"uuid": uuid})


class UploadManager:
    """Upload sessions of one store. ``clock`` stamps ``started_at`` (use a wall clock)."""

    def __init__(
        self,
        layout: StoreLayout,
        blobs: BlobStore,
        meta: MetadataStore,
        clock: Clock,
        *,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        max_sessions: int = 0,
        max_sessions_per_owner: int = 0,
    ) -> None:
        self.layout = layout
        self.blobs = blobs
        self.meta = meta
        self.clock = clock
        self.flush_bytes = flush_bytes
        layout.ensure()
        self._sessions: dict[str, _Session] = {}
        self.max_sessions = max_sessions  # 0 = unlimited
        self.max_sessions_per_owner = max_sessions_per_owner  # 0 = unlimited
        self._open: set[str] = {record.uuid for record in meta.uploads()}
        self._owner_of: dict[str, str] = {}
        self._per_owner: Counter[str] = Counter()

    # -- start-up --------------------------------------------------------------------------------

    def recover(self) -> UploadRecovery:
        """Make sessions and files agree after a crash (call once at start, before serving)."""
        kept = truncated = dropped = orphans = 0
        known: set[str] = set()
        for record in self.meta.uploads():
            if not is_upload_uuid(record.uuid):
                self.meta.delete_upload(record.uuid)
                dropped += 1
                continue
            path = self.layout.upload_data_path(record.uuid)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = -1
            if size < record.offset:
                self.meta.delete_upload(record.uuid)
                self._remove_dir(record.uuid)
                dropped += 1
                continue
            if size > record.offset:
                with open(path, "r+b") as f:
                    f.truncate(record.offset)
                    os.fsync(f.fileno())
                truncated += 1
            known.add(record.uuid)
            kept += 1
        self._open = set(known)
        for entry in os.scandir(self.layout.uploads_dir):
            if entry.name not in known:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                orphans += 1
        if orphans:
            fsync_dir(self.layout.uploads_dir)
        return UploadRecovery(kept, truncated, dropped, orphans)

    # -- sessions --------------------------------------------------------------------------------

    def create(self, repo: str, owner: str | None = None) -> UploadRecord:
        """Start a session for ``repo`` (the name must already be validated) on behalf of
        ``owner``; ``TOOMANYREQUESTS`` when a session cap is reached (see the module docstring)."""
        self._check_caps(owner)
        uuid = str(uuidlib.uuid4())
        directory = self.layout.upload_dir(uuid)
        directory.mkdir()
        self.layout.upload_data_path(uuid).touch(exist_ok=False)
        # Directory entries are made durable by the first append, before any offset is recorded.
        self._sessions[uuid] = _Session(hasher=hashlib.new(_INCREMENTAL_ALGORITHM))
        record = self.meta.create_upload(repo, uuid, self.clock.now())
        self._open.add(uuid)
        if owner is not None:
            self._owner_of[uuid] = owner
            self._per_owner[owner] += 1
        return record

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    def sessions_of(self, owner: str) -> int:
        return self._per_owner[owner]

    def _check_caps(self, owner: str | None) -> None:
        if self.max_sessions and len(self._open) >= self.max_sessions:
            raise _too_many(f"this node has {len(self._open)} open upload sessions (the most "
                            "it keeps); finish or cancel one, or retry later",
                            {"open": len(self._open), "limit": self.max_sessions})
        if owner is not None and self.max_sessions_per_owner:
            held = self._per_owner[owner]
            if held >= self.max_sessions_per_owner:
                raise _too_many(f"this client has {held} open upload sessions (the most one "
                                "client may hold); finish or cancel one, or retry later",
                                {"open": held, "limit": self.max_sessions_per_owner})

    def get(self, repo: str, uuid: str) -> UploadRecord:
        """The session ``uuid`` of ``repo``; ``BLOB_UPLOAD_UNKNOWN`` when absent or elsewhere."""
        if not is_upload_uuid(uuid):
            raise _unknown(uuid)
        record = self.meta.get_upload(uuid)
        if record is None or record.repo != repo:
            raise _unknown(uuid)
        return record

    async def append(
        self, repo: str, uuid: str, chunks: AsyncIterator[bytes], start: int | None = None
    ) -> int:
        """Append a chunk streamed from ``chunks``; return the new offset.

        ``start`` (the first byte of a ``Content-Range``) must equal the current offset, else
        ``BLOB_UPLOAD_INVALID`` with status 416 and a ``Range`` header is raised before any byte is
        read. ``None`` appends at the current offset. Concurrent appends to one session run one
        after the other.
        """
        self.get(repo, uuid)
        session = self._session(uuid)
        async with session.lock:
            record = self.get(repo, uuid)  # it may have been finished while we waited
            if start is not None and start != record.offset:
                raise RegistryError(
                    ErrorCode.BLOB_UPLOAD_INVALID,
                    f"chunk starts at {start}, upload holds {record.offset} bytes",
                    {"uuid": uuid, "offset": record.offset, "start": start},
                    status=416,
                    headers={"Range": range_header(record.offset)},
                )
            return await self._append_locked(session, record, chunks)

    async def finish(self, repo: str, uuid: str, digest: Digest) -> int:
        """Commit the session's data as blob ``digest``, link it into ``repo``; return its size.

        On a digest mismatch ``DIGEST_INVALID`` is raised and the session is kept.
        """
        self.get(repo, uuid)
        session = self._session(uuid)
        async with session.lock:
            record = self.get(repo, uuid)
            actual: Digest | None = None
            if (
                session.hasher is not None
                and session.hashed == record.offset
                and digest.algorithm == _INCREMENTAL_ALGORITHM
            ):
                actual = Digest(_INCREMENTAL_ALGORITHM, session.hasher.hexdigest())
            path = self.layout.upload_data_path(uuid)
            await self.blobs.commit_file(path, digest, actual=actual)
            self.meta.link_blob(repo, digest, record.offset)
            self._drop(uuid)
            return record.offset

    def cancel(self, repo: str, uuid: str) -> None:
        """Drop a session and its data; ``BLOB_UPLOAD_UNKNOWN`` when there is none."""
        self.get(repo, uuid)
        self._drop(uuid)

    def expire(self, max_age_s: float) -> int:
        """Drop idle sessions started more than ``max_age_s`` ago; return how many."""
        cutoff = self.clock.now() - max_age_s
        expired = 0
        for record in self.meta.uploads():
            session = self._sessions.get(record.uuid)
            if record.started_at < cutoff and not (session is not None and session.lock.locked()):
                self._drop(record.uuid)
                expired += 1
        return expired

    # -- internals -------------------------------------------------------------------------------

    def _session(self, uuid: str) -> _Session:
        session = self._sessions.get(uuid)
        if session is None:
            session = self._sessions[uuid] = _Session()
        return session

    async def _append_locked(
        self, session: _Session, record: UploadRecord, chunks: AsyncIterator[bytes]
    ) -> int:
        uuid, offset = record.uuid, record.offset
        path = self.layout.upload_data_path(uuid)
        upload_dir = path.parent
        uploads_dir = self.layout.uploads_dir
        try:
            if session.hasher is None or session.hashed != offset:
                session.hasher = await asyncio.to_thread(_hash_prefix, path, offset)
                session.hashed = offset
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop(uuid)
            raise _unknown(uuid) from None
        hasher = session.hasher.copy()
        sink = HashingSink(fd, hasher, written=offset, flush_bytes=self.flush_bytes)
        durable: asyncio.Future[None] | None = None
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            async for chunk in chunks:
                await _on_disk(sink.write(chunk))
            await _on_disk(sink.flush())

            def make_durable() -> None:
                os.fsync(fd)
                if offset == 0:
                    fsync_dir(upload_dir)
                    fsync_dir(uploads_dir)

            durable = asyncio.ensure_future(asyncio.to_thread(make_durable))
            await _on_disk(asyncio.shield(durable))
        except BaseException as exc:
            await _rollback(sink, durable, fd, offset)
            if isinstance(exc, _DiskError):
                raise storage_error(exc.error, self.layout.root) from exc.error
            raise  # the body's own failure (client gone, cancelled): no new offset recorded
        os.close(fd)
        if not self.meta.set_upload_offset(uuid, sink.written):
            raise _unknown(uuid)  # cancelled while the chunk arrived
        session.hasher, session.hashed = hasher, sink.written
        return sink.written

    def _drop(self, uuid: str) -> None:
        self.meta.delete_upload(uuid)
        self._remove_dir(uuid)
        self._sessions.pop(uuid, None)
        self._open.discard(uuid)
        owner = self._owner_of.pop(uuid, None)
        if owner is not None:
            self._per_owner[owner] -= 1
            if self._per_owner[owner] <= 0:
                del self._per_owner[owner]

    def _remove_dir(self, uuid: str) -> None:
        shutil.rmtree(self.layout.upload_dir(uuid), ignore_errors=True)


class _DiskError(Exception):
    """An ``OSError`` from our own file, as opposed to one from the request body."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def _on_disk(operation: Awaitable[None]) -> None:
    try:
        await operation
    except OSError as exc:
        raise _DiskError(exc) from exc


async def _rollback(
    sink: HashingSink, durable: asyncio.Future[None] | None, fd: int, offset: int
) -> None:
    """Cut the data file back to the recorded ``offset`` after a failed append, then close it.

    Worker threads still using ``fd`` are waited for first (a cancel is re-raised afterwards).
    """
    cancelled = False
    for wait in (sink.settle(), settle(durable) if durable is not None else None):
        if wait is None:
            continue
        try:
            await wait
        except asyncio.CancelledError:
            cancelled = True
    with contextlib.suppress(OSError):
        os.ftruncate(fd, offset)
    os.close(fd)
    if cancelled:
        raise asyncio.CancelledError


def _hash_prefix(path: Path, offset: int) -> hashlib._Hash:
    """sha256 of the first ``offset`` bytes of ``path`` (after a restart lost the running hash)."""
    hasher = hashlib.new(_INCREMENTAL_ALGORITHM)
    remaining = offset
    with open(path, "rb") as f:
        while remaining > 0:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher
