"""One fetch per digest per node: a fill streams from its sources into a storage ``BlobWriter``.

Owns: ``BlobFetcher`` (the table of fills in progress: a second request for a digest joins the
running fill instead of starting another), ``Fill`` (one blob arriving: its writer, its size once
a source said it, its outcome) and ``FillError``.

Rules:
- A fill runs in its own task: a client that goes away never aborts it (the cache still fills).
- Sources are tried in order (``[peers..., upstream]``); when one fails mid-stream the next one
  resumes at the byte offset already received (a ``Range`` request), nothing is fetched twice.
- A source that declares a different size than an earlier one, or sends more bytes than the size,
  is lying: the fill fails as ``wrong_bytes``. So does a commit whose digest does not match: the
  writer removes its temp file and nothing is committed.
- Before the size a source announced becomes the fill's size (and so before any reader can
  send a 200), the writer reserves that much room on the disk (``storage/room.py``: eviction
  first); a blob that cannot fit fails the fill with the store's 507, no other source tried.
- Readers (``reader.FollowedSpan``) never hand out the last byte of a response before the
  writer verified the digest, so a wrong blob can never reach a client as a complete response.

Must not import aiohttp, the registry package or gossip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from p2preg.clock import Clock, MonotonicClock
from p2preg.fetch.sources import BlobSource
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.storage.blobs import BlobStore, BlobWriter
from p2preg.storage.diskspace import InsufficientStorage
from p2preg.upstream.errors import UpstreamError, UpstreamNotFound

log = logging.getLogger(__name__)

#: While bytes arrive, followers never wait longer than this for bytes already received.
FLUSH_INTERVAL_S = 0.05

#: A fill's writer hashes and writes in batches of this size (the store's default, 1 MiB, suits
#: uploads). Measured on a cold 1 GiB pull-through: 4 MiB batches instead of 1 MiB cut the node's
#: CPU by ~0.9 s per GiB (fewer worker-thread hand-offs and follower wake-ups) and the wall time
#: by ~20%; 8 MiB gained nothing more. Memory: about two batches per fill.
FILL_FLUSH_BYTES = 4 << 20

#: Called once per finished fill: (source kind or "none", outcome) with outcome one of
#: ``ok``, ``wrong_bytes``, ``failed``.
FillObserver = Callable[[str, str], None]

#: Called for every chunk a fill receives: (source kind, bytes), before it is written. The data
#: plane's receive counter (``p2preg_fill_received_bytes_total``); it must be cheap.
ReceivedObserver = Callable[[str, int], None]


class FillError(Exception):
    """A fill did not produce a committed blob. ``wrong_bytes``: a source sent bad content."""

    def __init__(
        self,
        digest: Digest,
        reason: str,
        *,
        wrong_bytes: bool = False,
        not_found: bool = False,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(f"blob {digest}: {reason}")
        self.digest = digest
        self.reason = reason
        self.wrong_bytes = wrong_bytes
        self.not_found = not_found
        self.cause = cause

    def to_registry_error(self) -> RegistryError:
        if isinstance(self.cause, InsufficientStorage):
            return self.cause  # 507: the node's disk, not the source, is the problem
        if isinstance(self.cause, UpstreamError) and not self.wrong_bytes:
            code = ErrorCode.BLOB_UNKNOWN if self.not_found else None
            return self.cause.to_registry_error(code)
        code = ErrorCode.UPSTREAM_ERROR if self.wrong_bytes else ErrorCode.UNAVAILABLE
        return RegistryError(code, f"blob {self.digest}: {self.reason}",
                             {"digest": str(self.digest), "reason": self.reason})


class _SourceFailed(Exception):
    """This source cannot finish the blob; the next one may resume."""


class Fill:
    """One blob arriving from its sources; many readers may follow it (see ``reader.follow``)."""

    def __init__(self, digest: Digest, writer: BlobWriter) -> None:
        self.digest = digest
        self.writer = writer
        self.size: int | None = None
        #: Bytes handed to the writer so far (where the next source resumes).
        self.received = 0
        self.source_kind: str | None = None
        self.error: FillError | None = None
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def ready(self) -> int | None:
        """Wait until a source has answered; return the blob size (None if no source said it).

        Raises ``FillError`` when the fill failed before any source could deliver.
        """
        await self._started.wait()
        if self.error is not None and (self.size is None or self.error.wrong_bytes):
            raise self.error
        return self.size

    async def wait(self) -> Digest:
        """Wait for the end of the fill; the committed digest, or raise ``FillError``."""
        await self._finished.wait()
        if self.error is not None:
            raise self.error
        return self.digest


class BlobFetcher:
    """The node's fills in progress, at most one per digest."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        clock: Clock | None = None,
        observer: FillObserver | None = None,
        received: ReceivedObserver | None = None,
        flush_bytes: int = FILL_FLUSH_BYTES,
    ) -> None:
        self._blobs = blobs
        self._flush_bytes = flush_bytes
        self._clock = clock or MonotonicClock()
        self._observe = observer or (lambda kind, outcome: None)
        self.count_received: ReceivedObserver = received or (lambda kind, nbytes: None)
        self._fills: dict[Digest, Fill] = {}
        self.started_total = 0
        self.wrong_bytes_total = 0
        self.failed_total = 0

    def in_flight(self, digest: Digest) -> Fill | None:
        fill = self._fills.get(digest)
        return fill if fill is not None and not fill.finished else None

    def fills_in_flight(self) -> list[Fill]:
        """The fills in progress now (read-only: the status page shows their progress)."""
        return [fill for fill in self._fills.values() if not fill.finished]

    def fill(self, digest: Digest, sources: Sequence[BlobSource]) -> Fill:
        """Join the fill of ``digest`` in progress, or start one over ``sources`` (in order)."""
        running = self.in_flight(digest)
        if running is not None:
            return running
        fill = Fill(digest, self._blobs.writer(expected=digest, flush_bytes=self._flush_bytes))
        self._fills[digest] = fill
        self.started_total += 1
        fill._task = asyncio.create_task(self._run(fill, list(sources)),
                                         name=f"p2preg-fill-{digest.hex[:12]}")
        return fill

    async def close(self) -> None:
        """Cancel every fill in progress (their writers abort, nothing is committed)."""
        tasks = [f._task for f in self._fills.values() if f._task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a source that broke while closing: the fill is gone anyway
                log.debug("fill task ended with an error while closing", exc_info=True)

    # -- the fill task ---------------------------------------------------------------------------

    async def _run(self, fill: Fill, sources: list[BlobSource]) -> None:
        try:
            await self._fill_from(fill, sources)
            try:
                await fill.writer.commit()
            except RegistryError as exc:
                wrong = exc.code is ErrorCode.DIGEST_INVALID
                actual = exc.detail.get("actual") if isinstance(exc.detail, dict) else None
                reason = (f"{fill.source_kind} sent bytes that hash to {actual}"
                          if wrong else exc.message)
                raise FillError(fill.digest, reason, wrong_bytes=wrong, cause=exc) from exc
            self._observe(fill.source_kind or "none", "ok")
        except FillError as exc:
            fill.error = exc
            await fill.writer.abort()
            if exc.wrong_bytes:
                self.wrong_bytes_total += 1
                log.warning("wrong bytes for %s from %s: %s", fill.digest, fill.source_kind,
                            exc.reason)
            else:
                self.failed_total += 1
                log.info("fill of %s failed: %s", fill.digest, exc.reason)
            self._observe(fill.source_kind or "none", "wrong_bytes" if exc.wrong_bytes
                          else "failed")
        except BaseException as exc:
            fill.error = FillError(fill.digest, f"fill stopped: {exc!r}", cause=exc)
            await fill.writer.abort()
            self.failed_total += 1
            raise
        finally:
            fill._started.set()
            fill._finished.set()
            if self._fills.get(fill.digest) is fill:
                del self._fills[fill.digest]

    async def _fill_from(self, fill: Fill, sources: list[BlobSource]) -> None:
        failures: list[str] = []
        last: BaseException | None = None
        all_not_found = True
        for source in sources:
            try:
                await self._stream(fill, source)
                return
            except _SourceFailed as exc:
                failures.append(f"{source.name}: {exc}")
                last = exc.__cause__ or exc
                all_not_found = all_not_found and isinstance(last, UpstreamNotFound)
        reason = "; ".join(failures) or "no source to fetch it from"
        raise FillError(fill.digest, reason, cause=last,
                        not_found=bool(failures) and all_not_found)

    async def _flush_when_idle(self, writer: BlobWriter, lock: asyncio.Lock,
                               last_chunk: list[float]) -> None:
        while True:
            await self._clock.sleep(FLUSH_INTERVAL_S)
            if writer.received > writer.size \
                    and self._clock.now() - last_chunk[0] >= FLUSH_INTERVAL_S:
                async with lock:
                    if not writer.failed and not writer.done:
                        await writer.flush()

    async def _stream(self, fill: Fill, source: BlobSource) -> None:
        writer = fill.writer
        offset = fill.received
        try:
            stream = await source.open(fill.digest, offset)
        except (UpstreamError, OSError) as exc:
            raise _SourceFailed(str(exc)) from exc
        async with stream:
            if stream.size is not None:
                if fill.size is None:
                    try:  # room on the disk before the size is announced (and a 200 sent)
                        await writer.reserve(stream.size)
                    except RegistryError as exc:
                        raise FillError(fill.digest, exc.message, cause=exc) from exc
                    fill.size = stream.size
                elif stream.size != fill.size:
                    raise FillError(fill.digest, f"{source.name} says the blob has "
                                    f"{stream.size} bytes, another source said {fill.size}",
                                    wrong_bytes=True)
            fill.source_kind = source.kind
            fill._started.set()
            # Bytes reach the file in batches (the writer's own policy, best for throughput).
            # Followers must not starve on a slow source, so when the file has not grown for
            # FLUSH_INTERVAL_S the buffered bytes are pushed out; the first chunk goes at once
            # (time to first byte).
            # A source that pauses (an upstream holding back, a swarm waiting for a piece)
            # must not leave bytes in the writer's memory: peers and clients follow the file.
            # A watcher flushes them once no chunk came for FLUSH_INTERVAL_S; the lock keeps
            # the writer's one-producer rule.
            visible, grew_at = writer.size, self._clock.now()
            first = True
            lock = asyncio.Lock()
            last_chunk = [grew_at]
            watcher = asyncio.create_task(self._flush_when_idle(writer, lock, last_chunk))
            try:
                async for chunk in stream.chunks():
                    if fill.size is not None and fill.received + len(chunk) > fill.size:
                        raise FillError(fill.digest, f"{source.name} sent more than the "
                                        f"{fill.size} bytes it announced", wrong_bytes=True)
                    self.count_received(source.kind, len(chunk))
                    async with lock:
                        await writer.write(chunk)
                        fill.received += len(chunk)
                        now = last_chunk[0] = self._clock.now()
                        if writer.size != visible:
                            visible, grew_at = writer.size, now
                        elif first or now - grew_at >= FLUSH_INTERVAL_S:
                            await writer.flush()
                            visible, grew_at, first = writer.size, now, False
            except (UpstreamError, OSError) as exc:
                raise _SourceFailed(f"broke off at byte {fill.received}: {exc}") from exc
            except RegistryError as exc:  # the store could not write: no source can help
                raise FillError(fill.digest, exc.message, cause=exc) from exc
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, RegistryError):
                    await watcher
        if fill.size is not None and fill.received < fill.size:
            raise _SourceFailed(f"ended at byte {fill.received} of {fill.size}")
