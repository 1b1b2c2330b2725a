"""Room on disk for a blob whose size is known before its bytes arrive (a mirror fill).

Owns: ``RoomKeeper`` (reservations of the writers in progress, the room-making callback, the
short-lived list of digests refused for lack of room, and its metrics: ``p2preg_store_free_bytes``,
``p2preg_store_no_room_total``) and ``RoomMaker``.

Rules:

1. ``reserve(writer, size)``: needed = ``size`` - bytes the writer already holds +
   ``margin_bytes`` (room left for the metadata database and temp files); available = the file
   system's free bytes - what other writers reserved and have not written yet. The reservation is
   recorded before any ``await``, so two fills cannot both count the same free bytes.
2. Short of room, ``room_maker(short_bytes)`` is awaited (in a mirror: LRU eviction beyond the
   quota, with the usual keep rules; ``Maintenance.make_room``) and the free bytes are read again.
3. Still short: ``InsufficientStorage`` (507: free and needed bytes in the detail) before a byte is
   written, and the digest is *refused* for ``refuse_for_s``: ``check(digest)`` (called when a
   writer for it is created) raises the same error at once, so clients retrying do not make the
   node ask its upstream again and again. A disk that filled up mid-write, or at the commit (no
   room for the blob's link or directory), refuses the digest too.
4. ``release(writer)`` when the writer commits or fails.

Time is ``clock()`` (monotonic seconds; injected in tests). Must not import aiohttp, sqlite3 or
the registry, fetch, gossip or p2p packages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2preg.oci.digest import Digest
from p2preg.storage.diskspace import InsufficientStorage, free_bytes

log = logging.getLogger(__name__)

DEFAULT_MARGIN_BYTES = 16 * 1024 * 1024
DEFAULT_REFUSE_FOR_S = 30.0
_MAX_REFUSED = 4096

RoomMaker = Callable[[int], Awaitable[int]]
"""Free at least the given number of bytes if possible; returns the bytes freed."""


class _Writer(Protocol):
    @property
    def size(self) -> int: ...


class RoomKeeper:
    """Disk-space reservations for the blob writers of one store (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        margin_bytes: int = DEFAULT_MARGIN_BYTES,
        refuse_for_s: float = DEFAULT_REFUSE_FOR_S,
        clock: Callable[[], float] = time.monotonic,
        free: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.root = root
        self.margin_bytes = margin_bytes
        self.refuse_for_s = refuse_for_s
        self.room_maker: RoomMaker | None = None
        self._clock = clock
        self._free = free
        self._reserved: dict[int, tuple[_Writer, int]] = {}
        self._refused: dict[Digest, tuple[float, int | None]] = {}
        self.refused_total = 0  # writers refused (at reserve, or at once while refused)

    def outstanding_bytes(self, *, besides: _Writer | None = None) -> int:
        """Bytes reserved and not yet written, by every writer but ``besides``."""
        return sum(max(0, size - writer.size) for writer, size in self._reserved.values()
                   if writer is not besides)

    def check(self, digest: Digest) -> None:
        """Raise ``InsufficientStorage`` when ``digest`` was refused for lack of room lately."""
        entry = self._refused.get(digest)
        if entry is None:
            return
        until, needed = entry
        if self._clock() >= until:
            del self._refused[digest]
            return
        self.refused_total += 1
        raise InsufficientStorage(
            self.root, needed_bytes=needed,
            message=f"insufficient storage: blob {digest} did not fit on this node's disk "
                    f"(not tried again for {until - self._clock():.0f} s)")

    async def reserve(self, writer: _Writer, digest: Digest, size: int) -> None:
        """Make sure ``size`` bytes of ``digest`` fit before they are written (rules 1-3)."""
        self._reserved[id(writer)] = (writer, size)
        try:
            needed = max(0, size - writer.size) + self.margin_bytes
            short = needed - self._available(writer)
            if short > 0 and self.room_maker is not None:
                freed = await self.room_maker(short)
                log.info("made room for %s: %d bytes wanted, %d freed", digest, short, freed)
                short = needed - self._available(writer)
            if short > 0:
                self.refuse(digest, size)
                raise InsufficientStorage(
                    self.root, needed_bytes=needed,
                    message=f"insufficient storage: blob {digest} ({size} bytes) does not fit "
                            "on this node's disk, even after evicting what may be evicted")
        except BaseException:
            self.release(writer)
            raise

    def release(self, writer: _Writer) -> None:
        self._reserved.pop(id(writer), None)

    def refuse(self, digest: Digest, needed: int | None) -> None:
        """Refuse new writers of ``digest`` for ``refuse_for_s`` (rule 3)."""
        self.refused_total += 1
        if len(self._refused) >= _MAX_REFUSED:
            now = self._clock()
            for key in [k for k, (until, _) in self._refused.items() if until <= now]:
                del self._refused[key]
            if len(self._refused) >= _MAX_REFUSED:
                self._refused.pop(next(iter(self._refused)))
        self._refused[digest] = (self._clock() + self.refuse_for_s, needed)
        log.warning("no room for blob %s (%s bytes); refusing it for %.0f s", digest,
                    "?" if needed is None else needed, self.refuse_for_s,
                    extra={"fields": {"event": "blob_no_room", "digest": str(digest),
                                      "needed_bytes": needed}})

    def _available(self, writer: _Writer) -> int:
        # statvfs on the loop: a few microseconds, and no suspension point when there is room (a
        # fill reads its source's first bytes without an extra loop turn).
        return self._free(self.root) - self.outstanding_bytes(besides=writer)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_RoomCollector(self))


class _RoomCollector(Collector):
    def __init__(self, keeper: RoomKeeper) -> None:
        self._keeper = keeper

    def collect(self) -> Iterator[Metric]:
        keeper = self._keeper
        try:
            free = float(keeper._free(keeper.root))
        except OSError:
            free = float("nan")
        yield GaugeMetricFamily("p2preg_store_free_bytes", "Bytes still free on the file system "
                                "of the data directory.", value=free)
        yield CounterMetricFamily("p2preg_store_no_room", "Blob writes refused because the blob "
                                  "did not fit on the disk (507), retries while refused "
                                  "included.", value=keeper.refused_total)
