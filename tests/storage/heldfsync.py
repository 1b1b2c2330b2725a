"""A commit held at its fsync, for tests of what readers see before the blob is durable.

``HeldFsync.install(monkeypatch)`` replaces ``p2preg.storage.blobs._fsync_file``: the commit of
a blob of at least ``min_bytes`` blocks in its worker thread until ``release()`` (smaller blobs,
e.g. manifests, pass through). Always ``release()`` in teardown so no thread is left waiting.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from p2preg.storage import blobs as blobs_module

#: A held fsync gives up after this long, so a failing test cannot hang the run.
HOLD_LIMIT_S = 30.0


class HeldFsync:
    def __init__(self, min_bytes: int = 0) -> None:
        self.min_bytes = min_bytes
        self.entered = threading.Event()
        self._release = threading.Event()
        self.held = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> HeldFsync:
        real = blobs_module._fsync_file

        def held_fsync(fd: int) -> None:
            if os.fstat(fd).st_size >= self.min_bytes:
                self.held += 1
                self.entered.set()
                self._release.wait(HOLD_LIMIT_S)
            real(fd)

        monkeypatch.setattr(blobs_module, "_fsync_file", held_fsync)
        return self

    async def wait_entered(self) -> None:
        """Until a commit is blocked in its fsync."""
        assert await asyncio.to_thread(self.entered.wait, HOLD_LIMIT_S), "no commit reached fsync"

    def release(self) -> None:
        self._release.set()
