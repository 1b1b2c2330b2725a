"""The content-addressable blob store: one verified file per digest, committed atomically.

Owns: ``BlobStore`` (what is committed under ``blobs/``, the temp files under ``tmp/``, the
registry of writers in progress) and ``BlobWriter`` (one blob being written, which readers can
follow while it grows).

The commit protocol (docs/storage.md): bytes go to ``tmp/<random>.part`` and are hashed as they
arrive (batched, off the event loop, see ``sink.py``); on commit the digest is compared first (a
match sets ``BlobWriter.verified`` at once, so readers following the temp file may release its
last bytes without waiting for the disk), then the file is fsync'ed and only then hard-linked to
``blobs/<alg>/<hex[:2]>/<hex>`` (``link`` never replaces, so concurrent writers of one digest
cannot race) before the temp name is removed and the directory fsync'ed. A crash at any instant
leaves at worst a temp file, which ``recover()`` deletes; a name under ``blobs/`` always holds
complete, verified content. Once the link exists the blob is committed: a failure of the steps
after it (removing the temp name, the directory's fsync) is logged and counted in
``dir_sync_failed_total``, and the commit succeeds, because readers already see the blob and its
bytes are verified and fsync'ed; only the name's survival of a crash is in doubt, and a lost
name is a missing blob (fetched or pushed again), never a corrupt one.

Bit rot (docs/storage.md, "Integrity over time"): a committed file whose bytes stop matching its
name is taken out of ``blobs/`` by ``quarantine`` (moved to ``quarantine/`` with
``keep_quarantined``, the registry's default, else deleted: a mirror fetches it again), counted
in ``corrupt_total`` by who found it and reported to every ``corruption_listeners`` entry (the
node advertises a ``drop``). ``read_verified`` (manifests, on every read) and ``check`` (a peer's
report) find it on demand; ``storage/scrub.py`` finds it in the background.

Must not import aiohttp, sqlite3, the metadata store or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.diskspace import is_disk_full, storage_error
from p2preg.storage.layout import StoreLayout, fsync_dir
from p2preg.storage.room import RoomKeeper
from p2preg.storage.sink import DEFAULT_FLUSH_BYTES, HashingSink, hash_and_write

DEFAULT_ALGORITHM = "sha256"
HASH_CHUNK_BYTES = 1 << 20

log = logging.getLogger(__name__)

CorruptionListener = Callable[[Digest], object]
"""Called (on the event loop) with each digest ``quarantine`` took out of the store."""


class CorruptBlob(RegistryError):
    """The committed copy of a blob no longer matched its digest and was quarantined."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(
            ErrorCode.BLOB_UNKNOWN,
            "the stored copy failed its integrity check and was quarantined",
            {"digest": str(digest)},
        )
        self.digest = digest


class Rehash:
    """A committed file being re-hashed: feed it with ``step`` until ``done``.

    Holds the file open until ``close`` (call it after any ``quarantine``): the bytes hashed are
    those of one inode even if the name is replaced meanwhile, and while it is open that inode
    number cannot be reused, so ``inode`` lets ``quarantine`` move only that file.
    """

    def __init__(self, path: Path, algorithm: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()/step()
        self.inode = os.fstat(self._file.fileno()).st_ino
        self._hasher = hashlib.new(algorithm)
        self.done = False

    def step(self, max_bytes: int = HASH_CHUNK_BYTES) -> int:
        """Hash up to ``max_bytes`` more (blocking: call it in a worker thread); bytes read."""
        chunk = self._file.read(max_bytes)
        if chunk:
            self._hasher.update(chunk)
        else:
            self.done = True
        return len(chunk)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._file.close()


class _DigestMismatch(Exception):
    def __init__(self, actual: Digest) -> None:
        super().__init__(str(actual))
        self.actual = actual


def _mismatch_error(expected: Digest, actual: Digest) -> RegistryError:
    return RegistryError(
        ErrorCode.DIGEST_INVALID,
        "provided digest did not match uploaded content",
        {"expected": str(expected), "actual": str(actual)},
    )


class BlobStore:
    """Committed blobs under ``layout.blobs_dir`` plus the writers still in progress.

    ``has``/``size``/``path`` only ever see committed, verified content. Counters behind
    ``count()``/``total_bytes()`` are computed by one scan (at ``recover()`` or first use) and kept
    up to date by this process's commits and deletes.
    """

    def __init__(self, layout: StoreLayout, *, flush_bytes: int = DEFAULT_FLUSH_BYTES) -> None:
        self.layout = layout
        self.flush_bytes = flush_bytes
        layout.ensure()
        self._writers: dict[Digest, list[BlobWriter]] = {}
        self._count: int | None = None
        self._total_bytes = 0
        self._place_lock = threading.Lock()  # a re-commit's link/utime vs a GC delete
        self.keep_quarantined = True
        self.corruption_listeners: list[CorruptionListener] = []
        self.corrupt_total: Counter[str] = Counter()  # by who found it: scrub, read, peer_report
        #: Commits whose cleanup after the link failed (the temp name's removal or the directory's
        #: fsync): committed and reported so, the name's durability in doubt (module docstring).
        self.dir_sync_failed_total = 0
        self.room = RoomKeeper(layout.root)  # reservations before fills (storage/room.py)

    # -- start-up --------------------------------------------------------------------------------

    def recover(self) -> int:
        """Delete every leftover temp file (call once, before any writer exists); return how many.

        Also recounts the committed blobs.
        """
        if any(self._writers.values()):
            raise RuntimeError("recover() while blob writers are active")
        removed = 0
        for entry in os.scandir(self.layout.tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        if removed:
            fsync_dir(self.layout.tmp_dir)
        self._scan()
        return removed

    # -- committed blobs -------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        return self.layout.blob_path(digest).is_file()

    def size(self, digest: Digest) -> int | None:
        """The committed blob's size in bytes, or None when it is not in the store."""
        try:
            return self.layout.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def path(self, digest: Digest) -> Path:
        """The committed blob's file (for sendfile); raises ``BLOB_UNKNOWN`` when absent."""
        path = self.layout.blob_path(digest)
        if not path.is_file():
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)})
        return path

    def mtime(self, digest: Digest) -> float | None:
        """Wall-clock time the blob was committed or last re-committed; None when absent."""
        try:
            return self.layout.blob_path(digest).stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self, digest: Digest) -> bool:
        """Remove a committed blob; False when it was not there. Metadata is the caller's job."""
        return self.delete_if_older(digest, float("inf")) is True

    def delete_if_older(self, digest: Digest, cutoff: float) -> bool | None:
        """Remove a committed blob unless it was committed (or re-committed) after ``cutoff``
        (its mtime or ctime): True when removed, False when kept as too young, None when it was
        not there. Garbage collection's delete: the check and the unlink hold the same lock as a
        re-commit's ``link``/``utime`` in ``_place``, so a blob an upload commits again right
        now is never removed under it.
        """
        path = self.layout.blob_path(digest)
        with self._place_lock:
            try:
                st = path.stat()
                if max(st.st_mtime, st.st_ctime) > cutoff:
                    return False
                path.unlink()
            except FileNotFoundError:
                return None
        fsync_dir(path.parent)
        if self._count is not None:
            self._count -= 1
            self._total_bytes -= st.st_size
        return True

    def count(self) -> int:
        if self._count is None:
            self._scan()
        assert self._count is not None
        return self._count

    def total_bytes(self) -> int:
        if self._count is None:
            self._scan()
        return self._total_bytes

    def digests(self) -> Iterator[Digest]:
        """Every committed digest (a directory walk; order unspecified)."""
        for path, _size in self._walk():
            digest = self.layout.digest_of_blob_path(path)
            if digest is not None:
                yield digest

    # -- integrity -------------------------------------------------------------------------------

    def open_rehash(self, digest: Digest) -> Rehash | None:
        """Start re-hashing the committed blob (blocking open); None when it is absent."""
        try:
            return Rehash(self.layout.blob_path(digest), digest.algorithm)
        except FileNotFoundError:
            return None

    async def check(self, digest: Digest, *, found_by: str) -> str:
        """Re-hash a committed blob now and quarantine it when it does not match.

        Returns ``ok``, ``corrupt`` (it was quarantined by this call or a concurrent one) or
        ``absent``.
        """

        def rehash() -> Rehash | None:
            job = self.open_rehash(digest)
            while job is not None and not job.done:
                job.step(4 * HASH_CHUNK_BYTES)
            return job

        job = await asyncio.to_thread(rehash)
        if job is None:
            return "absent"
        try:
            if job.hexdigest() == digest.hex:
                return "ok"
            await self.quarantine(digest, inode=job.inode, found_by=found_by)
            return "corrupt"
        finally:
            job.close()

    async def read_verified(self, digest: Digest) -> bytes:
        """The committed blob's bytes, checked against its digest (for small blobs: manifests).

        Raises ``BLOB_UNKNOWN`` when absent and ``CorruptBlob`` (after quarantining the file)
        when its bytes do not match.
        """
        path = self.layout.blob_path(digest)

        def read() -> tuple[BinaryIO, bytes, bool]:
            f = open(path, "rb")  # noqa: SIM115 - kept open (inode pinned) until checked
            body = f.read()
            return f, body, hashlib.new(digest.algorithm, body).hexdigest() == digest.hex

        try:
            f, body, good = await asyncio.to_thread(read)
        except FileNotFoundError:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)}) from None
        try:
            if not good:
                await self.quarantine(digest, inode=os.fstat(f.fileno()).st_ino,
                                      found_by="read")
                raise CorruptBlob(digest)
        finally:
            f.close()
        return body

    async def quarantine(self, digest: Digest, *, inode: int | None, found_by: str) -> bool:
        """Take a corrupt committed blob out of the store (only the file ``inode`` when given: a
        good copy committed meanwhile stays), count it, log it and tell the listeners.

        Returns False when there was nothing (or another file) to take out.
        """
        moved = await asyncio.to_thread(self._remove_corrupt, digest, inode)
        if not moved:
            return False
        self.corrupt_total[found_by] += 1
        log.error(
            "blob %s failed its integrity check (found by %s): %s", digest, found_by,
            "moved to quarantine/" if self.keep_quarantined else "deleted",
            extra={"fields": {"event": "blob_corrupt", "digest": str(digest),
                              "found_by": found_by, "kept": self.keep_quarantined}},
        )
        for listener in list(self.corruption_listeners):
            try:
                listener(digest)
            except Exception:
                log.exception("corruption listener failed for %s", digest)
        return True

    def is_quarantined(self, digest: Digest) -> bool:
        """True when a corrupt copy of ``digest`` was kept in quarantine and no good copy has
        been committed since."""
        return self.layout.quarantine_path(digest).exists() and not self.has(digest)

    def _remove_corrupt(self, digest: Digest, inode: int | None) -> bool:
        path = self.layout.blob_path(digest)
        target = self.layout.quarantine_path(digest)
        with self._place_lock:
            try:
                st = path.stat()
            except FileNotFoundError:
                return False
            if inode is not None and st.st_ino != inode:
                return False
            if self.keep_quarantined:
                if not self.layout.quarantine_dir.is_dir():
                    self.layout.quarantine_dir.mkdir(exist_ok=True)
                    fsync_dir(self.layout.root)
                os.replace(path, target)
                fsync_dir(self.layout.quarantine_dir)
            else:
                path.unlink()
        fsync_dir(path.parent)
        if self._count is not None:
            self._count -= 1
            self._total_bytes -= st.st_size
        return True

    # -- writing ---------------------------------------------------------------------------------

    def writer(
        self, expected: Digest | None = None, *, flush_bytes: int | None = None
    ) -> BlobWriter:
        """A new temp file under ``tmp/`` hashed as written.

        With ``expected`` the writer is registered so ``in_progress(expected)`` returns it until
        it commits or fails; without, the digest is sha256 of whatever was written.
        ``flush_bytes`` overrides the store's batch size for this writer (memory: about two
        batches per writer; bigger batches cost fewer thread hand-offs per byte).
        """
        if expected is not None:
            self.layout.blob_path(expected)  # validates the digest before any file exists
            self.room.check(expected)  # refused for lack of room a moment ago: 507 at once
        tmp_path = self.layout.new_tmp_path()
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error(exc, self.layout.root) from exc
        algorithm = expected.algorithm if expected is not None else DEFAULT_ALGORITHM
        writer = BlobWriter(self, expected, tmp_path, fd, hashlib.new(algorithm),
                            flush_bytes=self.flush_bytes if flush_bytes is None else flush_bytes)
        if expected is not None:
            self._writers.setdefault(expected, []).append(writer)
        return writer

    def in_progress(self, digest: Digest) -> BlobWriter | None:
        """The oldest live writer registered for ``digest``, or None."""
        for writer in self._writers.get(digest, ()):
            if not writer.done and not writer.failed:
                return writer
        return None

    async def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store a small blob (a manifest) in one go; returns its digest."""
        async with self.writer(expected) as writer:
            await writer.write(data)
            return await writer.commit()

    async def commit_file(
        self, src: Path, expected: Digest, *, actual: Digest | None = None
    ) -> None:
        """Verify an existing file (an upload's data) and move it into place as ``expected``.

        ``src`` must be on the store's filesystem. ``actual`` is the digest the caller already
        computed while writing ``src`` (skips re-reading it); otherwise the file is hashed here.
        On a mismatch ``src`` is kept and ``RegistryError(DIGEST_INVALID)`` raised.
        """
        self.layout.blob_path(expected)

        def verify_and_place() -> tuple[bool, int]:
            with open(src, "rb") as f:
                digest = actual
                if digest is None or digest.algorithm != expected.algorithm:
                    hexdigest = hashlib.file_digest(f, expected.algorithm).hexdigest()
                    digest = Digest(expected.algorithm, hexdigest)
                if digest != expected:
                    raise _DigestMismatch(digest)
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
            return self._place(src, expected), size

        try:
            placed, size = await asyncio.to_thread(verify_and_place)
        except _DigestMismatch as exc:
            raise _mismatch_error(expected, exc.actual) from None
        except FileNotFoundError:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "upload data missing") from None
        except OSError as exc:
            raise storage_error(exc, self.layout.root) from exc
        self._account(placed, size)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export ``p2preg_store_dir_sync_failed_total`` (read at scrape time)."""
        registry.register(_StoreCollector(self))

    # -- internals -------------------------------------------------------------------------------

    def _place(self, src: Path, digest: Digest) -> bool:
        """Give the fsync'ed, verified ``src`` its blob name, then drop ``src``. Thread-safe.

        Returns True when this call created the blob, False when it already existed.
        """
        final = self.layout.blob_path(digest)
        self._ensure_parent(final)
        try:
            with self._place_lock:  # against delete_if_older between the link and the utime
                try:
                    os.link(src, final)
                    placed = True
                except FileExistsError:
                    placed = False
                    # Fresh mtime: garbage collection spares blobs younger than its grace
                    # period, and this one is about to be linked again.
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(final)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            placed = not final.exists()  # no hard links here: fall back to an atomic replace
            os.replace(src, final)
        # The name is visible from here on: what follows must not turn the commit into a failure.
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(src)  # left behind, ``recover()`` deletes it at the next start
        except OSError as exc:
            self._after_link_failed(digest, "unlink_tmp", exc)
        try:
            _fsync_blob_dir(final.parent)
        except OSError as exc:
            self._after_link_failed(digest, "fsync_dir", exc)
        return placed

    def _after_link_failed(self, digest: Digest, step: str, exc: OSError) -> None:
        with self._place_lock:  # worker threads commit concurrently
            self.dir_sync_failed_total += 1
        log.error("blob %s committed, but %s failed after its link: %s (the blob is served; "
                  "a crash may lose its name)", digest, step, exc,
                  extra={"fields": {"event": "blob_dir_sync_failed", "digest": str(digest),
                                    "step": step, "errno": exc.errno}})

    def _ensure_parent(self, final: Path) -> None:
        prefix_dir = final.parent
        if prefix_dir.is_dir():
            return
        algorithm_dir = prefix_dir.parent
        if not algorithm_dir.is_dir():
            algorithm_dir.mkdir(exist_ok=True)
            fsync_dir(self.layout.blobs_dir)
        prefix_dir.mkdir(exist_ok=True)
        fsync_dir(algorithm_dir)

    def _account(self, placed: bool, size: int) -> None:
        if placed and self._count is not None:
            self._count += 1
            self._total_bytes += size

    def _walk(self) -> Iterator[tuple[Path, int]]:
        blobs_dir = self.layout.blobs_dir
        for algorithm in sorted(os.listdir(blobs_dir)):
            algorithm_dir = blobs_dir / algorithm
            if not algorithm_dir.is_dir():
                continue
            for prefix in sorted(os.listdir(algorithm_dir)):
                prefix_dir = algorithm_dir / prefix
                if not prefix_dir.is_dir():
                    continue
                for entry in os.scandir(prefix_dir):
                    if entry.is_file(follow_symlinks=False):
                        yield Path(entry.path), entry.stat().st_size

    def _scan(self) -> None:
        count = total = 0
        for path, size in self._walk():
            if self.layout.digest_of_blob_path(path) is not None:
                count += 1
                total += size
        self._count, self._total_bytes = count, total

    def _unregister(self, writer: BlobWriter) -> None:
        self.room.release(writer)
        if writer.expected is None:
            return
        writers = self._writers.get(writer.expected)
        if writers is None:
            return
        with contextlib.suppress(ValueError):
            writers.remove(writer)
        if not writers:
            del self._writers[writer.expected]


class BlobWriter:
    """One blob being written to a temp file; readers may follow it while it grows.

    ``size`` is the number of bytes already in ``tmp_path`` (readable by others); ``received``
    also counts bytes still buffered in memory. A reader waits with ``wait_for(offset)`` (or
    ``wait_for_final``) and reads from ``open_reader()``; it must treat the bytes as final only
    once ``verified`` is True: every byte is in the file and matches the digest (set by
    ``commit`` before the fsync; ``done`` follows once the blob is durable under its name). A
    ``failed`` writer's bytes did not match their digest or were abandoned; a writer that fails
    after ``verified`` (the disk refused the fsync or the link) had correct bytes, but nothing is
    committed.

    One producer task calls ``write``/``flush``/``commit``; ``abort`` may come from anywhere.
    """

    def __init__(
        self,
        store: BlobStore,
        expected: Digest | None,
        tmp_path: Path,
        fd: int,
        hasher: hashlib._Hash,
        *,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
    ) -> None:
        self.expected = expected
        self.tmp_path = tmp_path
        self.done = False
        self.failed = False
        self.verified = False
        self.digest: Digest | None = None
        self._store = store
        self._fd = fd
        self._sink = HashingSink(fd, hasher, flush_bytes=flush_bytes, on_flushed=self._grew)
        self._changed = asyncio.Event()
        self._closing = False
        self._commit_task: asyncio.Future[Digest] | None = None

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self.failed else "writing"
        return f"<BlobWriter {self.expected or '?'} {self.size} bytes {state}>"

    @property
    def size(self) -> int:
        """Bytes in ``tmp_path`` so far (after ``commit``: the blob's size)."""
        return self._sink.written

    @property
    def received(self) -> int:
        """Bytes accepted by ``write`` so far, including those still buffered."""
        return self._sink.total

    @property
    def final_path(self) -> Path | None:
        """Where the blob lives once committed (None before)."""
        return None if self.digest is None else self._store.layout.blob_path(self.digest)

    async def reserve(self, size: int) -> None:
        """Make sure the blob's ``size`` bytes fit before they arrive (``storage/room.py``):
        room is made by eviction when a room maker is set; raises ``InsufficientStorage``
        (507) otherwise, and the digest is refused for a short while."""
        self._check_open()
        if self.expected is None:
            raise ValueError("only a writer with an expected digest reserves room")
        await self._store.room.reserve(self, self.expected, size)

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk``; the disk work happens in batches in a worker thread."""
        self._check_open()
        try:
            await self._sink.write(chunk)
        except OSError as exc:
            await self._fail()
            raise self._disk_error(exc) from exc

    async def flush(self) -> None:
        """Make every accepted byte visible in ``tmp_path`` now (e.g. when the source stalls)."""
        self._check_open()
        try:
            await self._sink.flush()
        except OSError as exc:
            await self._fail()
            raise self._disk_error(exc) from exc

    def _disk_error(self, exc: OSError) -> RegistryError:
        """The error for a failed write, flush or commit (the writer has failed already): a full
        disk refuses the digest for a while (``storage/room.py``, rule 3) and is a 507."""
        if is_disk_full(exc) and self.expected is not None:
            self._store.room.refuse(self.expected, None)  # no retry loop filling the disk
        return storage_error(exc, self._store.layout.root)

    async def wait_for(self, offset: int) -> int:
        """Wait until ``size > offset`` or the writer is done or failed; return ``size``."""
        while self.size <= offset and not self.done and not self.failed:
            await self._changed.wait()
        return self.size

    async def wait_for_final(self, offset: int) -> int:
        """Like ``wait_for``, but also returns once ``verified`` (the size is final then)."""
        while self.size <= offset and not self.verified and not self.done and not self.failed:
            await self._changed.wait()
        return self.size

    def open_reader(self) -> BinaryIO:
        """Open the bytes written so far for reading (the temp file, or the blob once committed).

        The returned file stays valid across the commit's rename. Raises ``BLOB_UNKNOWN`` when
        the writer failed.
        """
        if not self.failed:
            final = self.final_path
            candidates = [final] if final is not None else [self.tmp_path]
            if final is None and self.expected is not None:
                # A commit thread may link + unlink right now: the blob name exists before the
                # temp name goes, so trying both in this order cannot miss.
                candidates.append(self._store.layout.blob_path(self.expected))
            for path in candidates:
                try:
                    return open(path, "rb")
                except FileNotFoundError:
                    continue
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob write was abandoned")

    async def commit(self, expected: Digest | None = None) -> Digest:
        """Verify against ``expected`` (or the writer's), fsync, link into place, fsync the dir.

        ``verified`` is set (and readers woken) as soon as the digest matches, before the fsync.
        On a mismatch the temp file is removed, ``failed`` set and ``DIGEST_INVALID`` raised.
        Committing a digest that is already stored keeps the existing file. Cancelling the
        caller does not interrupt a commit half-way: it completes (or fails) in its own task.
        """
        self._check_open()
        self._closing = True
        self._commit_task = asyncio.ensure_future(self._commit(expected))
        self._commit_task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(self._commit_task)

    async def _commit(self, expected: Digest | None) -> Digest:
        if expected is None:
            expected = self.expected
        elif self.expected is not None and expected != self.expected:
            await self._fail()
            raise _mismatch_error(expected, self.expected)
        try:
            await self._sink.drain()
        except OSError as exc:
            await self._fail()
            raise self._disk_error(exc) from exc
        chunks = self._sink.take_buffer()
        fd, self._fd = self._fd, -1
        hasher = self._sink.hasher
        store = self._store
        tmp_path = self.tmp_path

        def verify() -> tuple[Digest, int]:
            # Writes the last batch and checks the digest; the fd stays open for ``make_durable``
            # only when the bytes match.
            try:
                written = hash_and_write(fd, hasher, chunks)
                actual = Digest(hasher.name, hasher.hexdigest())
                if expected is not None and actual != expected:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp_path)
                    raise _DigestMismatch(actual)
            except BaseException:
                os.close(fd)
                raise
            return actual, written

        def make_durable(digest: Digest) -> bool:
            try:
                _fsync_file(fd)
            finally:
                os.close(fd)
            return store._place(tmp_path, digest)

        try:
            digest, written = await asyncio.to_thread(verify)
        except _DigestMismatch as exc:
            self._set_failed()
            assert expected is not None
            raise _mismatch_error(expected, exc.actual) from None
        except OSError as exc:
            await self._fail()
            raise self._disk_error(exc) from exc
        self.verified = True
        self._sink.advance(written)  # wakes the readers: the whole blob may be released now
        try:
            placed = await asyncio.to_thread(make_durable, digest)
        except OSError as exc:  # e.g. no inode left for the blob's link or its directory
            await self._fail()
            raise self._disk_error(exc) from exc
        self.digest = digest
        self.done = True
        store._account(placed, self.size)
        store._unregister(self)
        self._grew(self.size)
        return digest

    async def abort(self) -> None:
        """Abandon the blob: remove the temp file and wake readers (idempotent)."""
        if self._commit_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._commit_task)
            return
        if self.done or self.failed:
            return
        await self._fail()

    async def __aenter__(self) -> BlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.done:
            await self.abort()

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.done or self.failed or self._closing:
            raise RuntimeError(f"{self!r} is closed")

    async def _fail(self) -> None:
        if self.failed:
            return
        self._closing = True
        self._set_failed()
        self._sink.close()
        try:
            await self._sink.settle()  # never close the fd under a thread still writing to it
        finally:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)

    def _set_failed(self) -> None:
        self.failed = True
        self._store._unregister(self)
        self._grew(self.size)

    def _grew(self, _size: int) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()


class _StoreCollector(Collector):
    def __init__(self, store: BlobStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "p2preg_store_dir_sync_failed", "Blob commits whose steps after the link (the temp "
            "name's removal, the directory's fsync) failed: committed and served, the name may "
            "not survive a crash.", value=self._store.dir_sync_failed_total)


def _fsync_file(fd: int) -> None:
    """``os.fsync`` of a finished blob (one name, so tests can hold a commit at this point)."""
    os.fsync(fd)


def _fsync_blob_dir(path: Path) -> None:
    """``fsync_dir`` of a blob's directory after its link (one name, so tests can fail it)."""
    fsync_dir(path)


def _retrieve_exception(task: asyncio.Future[Digest]) -> None:
    # The committing caller may have been cancelled; the outcome is kept on the writer.
    if not task.cancelled():
        task.exception()
