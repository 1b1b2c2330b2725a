"""One process per data directory: an advisory ``flock`` on ``<root>/lock``.

Owns: ``DataDirLock``. Recovery deletes every temp file and resets upload sessions, which is only
safe when no other process is writing to the same store, so a node takes this lock before
``recover()`` and holds it until it exits (the kernel releases it if the process dies, even by
``kill -9``). Must not import aiohttp or other p2preg packages besides ``storage.layout``.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from p2preg.storage.layout import StoreLayout


class DataDirLocked(RuntimeError):
    """Another process holds the data directory."""


class DataDirLock:
    """Exclusive, non-blocking lock on a store; ``acquire()`` raises ``DataDirLocked`` if held."""

    def __init__(self, layout: StoreLayout) -> None:
        self.path = layout.lock_path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataDirLocked(
                f"{self.path.parent} is in use by {holder}; one p2preg node per data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
