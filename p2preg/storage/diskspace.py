"""Disk space: how much is free under the store, and what a full disk looks like to a client.

Owns: ``free_bytes`` (``statvfs`` of a path: bytes an unprivileged writer may still use),
``is_disk_full`` (``ENOSPC``/``EDQUOT``), ``storage_error`` (an ``OSError`` from the store's own
files as the client sees it: a full disk is ``507 Insufficient Storage`` with the OCI error body,
code ``UNKNOWN``, a message saying the disk is full and the free bytes in the detail; anything
else stays ``500 UNKNOWN "storage error: ..."``) and ``InsufficientStorage`` (the 507
``RegistryError`` raised before a write that cannot fit, e.g. a mirror fill larger than the room
eviction can make).

Must not import aiohttp, sqlite3 or the registry, fetch, gossip or p2p packages.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from p2preg.oci.errors import ErrorCode, RegistryError

INSUFFICIENT_STORAGE = 507
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: Path) -> int:
    """Bytes still available to this process on the file system holding ``path``."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


class InsufficientStorage(RegistryError):
    """``507``: the store has no room for this write (``needed_bytes`` when known)."""

    def __init__(self, root: Path, *, needed_bytes: int | None = None,
                 message: str | None = None) -> None:
        free = _free_or_none(root)
        detail: dict[str, int | str] = {}
        if free is not None:
            detail["free_bytes"] = free
        if needed_bytes is not None:
            detail["needed_bytes"] = needed_bytes
        text = message or "insufficient storage: the registry's disk is full"
        if free is not None:
            text += f" ({free} bytes free"
            text += f", {needed_bytes} needed)" if needed_bytes is not None else ")"
        super().__init__(ErrorCode.UNKNOWN, text, detail, status=INSUFFICIENT_STORAGE)
        self.free_bytes = free
        self.needed_bytes = needed_bytes


def storage_error(exc: OSError, root: Path) -> RegistryError:
    """The client-facing error for ``exc`` from the store's own files under ``root``."""
    if is_disk_full(exc):
        return InsufficientStorage(root)
    return RegistryError(ErrorCode.UNKNOWN, f"storage error: {exc.strerror or exc}")


def _free_or_none(root: Path) -> int | None:
    try:
        return free_bytes(root)
    except OSError:
        return None
