"""Where every file of the store lives: the only module that builds paths under the data root.

Owns: ``StoreLayout`` (the directory tree documented in docs/storage.md), the validation of
anything that becomes a path component (digests, upload uuids, temp-file names) and
``fsync_dir``. Every other module asks a ``StoreLayout`` for a path; none joins user input onto
a directory itself. Must not import aiohttp, sqlite3 or any p2preg package other than ``oci``.

Tree::

    <root>/
      blobs/<algorithm>/<hex[:2]>/<hex>   committed, verified content (one copy per digest)
      tmp/<random>.part                   blob writers' temp files (deleted by recovery)
      uploads/<uuid>/data                 upload sessions' bytes (resumable at the recorded offset)
      quarantine/<algorithm>-<hex>        a blob whose bytes no longer matched its digest (never
                                          served; registry mode keeps the last copy for forensics)
      metadata.db (+ -wal, -shm)          SQLite: repositories, tags, manifests, links, uploads
      lock                                flock'ed by the one process using this store
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-f]+")
# Upload session ids: what ``uuid.uuid4()`` prints (lowercase hex and dashes), bounded in length.
_UUID_RE = re.compile(r"[0-9a-f][0-9a-f-]{0,63}")
_TMP_NAME_RE = re.compile(r"[0-9a-f]{32}\.part")
UPLOAD_DATA_NAME = "data"


def is_upload_uuid(value: str) -> bool:
    """True when ``value`` is acceptable as an upload session id (and so as a directory name)."""
    return _UUID_RE.fullmatch(value) is not None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreLayout:
    """The paths of one store rooted at ``root``.

    Construction does no I/O; ``ensure()`` creates the directories (idempotent).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.uploads_dir = self.root / "uploads"
        self.quarantine_dir = self.root / "quarantine"
        self.db_path = self.root / "metadata.db"
        self.lock_path = self.root / "lock"

    def __repr__(self) -> str:
        return f"StoreLayout({str(self.root)!r})"

    def ensure(self) -> None:
        """Create the root and its top-level directories, durably."""
        created = False
        for directory in (self.root, self.blobs_dir, self.tmp_dir, self.uploads_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                created = True
        if created:
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    # -- blobs ---------------------------------------------------------------------------------

    def algorithm_dir(self, algorithm: str) -> Path:
        if algorithm not in _HEX_LENGTHS:
            raise RegistryError(ErrorCode.DIGEST_INVALID, f"unsupported algorithm {algorithm!r}")
        return self.blobs_dir / algorithm

    def blob_path(self, digest: Digest) -> Path:
        """``root/blobs/<alg>/<hex[:2]>/<hex>``; the digest is re-checked, so no path can escape."""
        _check_digest(digest)
        return self.blobs_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def digest_of_blob_path(self, path: Path) -> Digest | None:
        """The digest a file under ``blobs/`` is named for, or None when it is not a blob name."""
        try:
            relative = path.relative_to(self.blobs_dir)
        except ValueError:
            return None
        parts = relative.parts
        if len(parts) != 3 or parts[1] != parts[2][:2]:
            return None
        try:
            return parse_digest(f"{parts[0]}:{parts[2]}")
        except RegistryError:
            return None

    def quarantine_path(self, digest: Digest) -> Path:
        """``root/quarantine/<alg>-<hex>``: where a corrupt blob's file is moved (not created
        by ``ensure``: the directory appears with the first quarantined blob)."""
        _check_digest(digest)
        return self.quarantine_dir / f"{digest.algorithm}-{digest.hex}"

    # -- temp files ----------------------------------------------------------------------------

    def new_tmp_path(self) -> Path:
        """A fresh, unpredictable temp-file path under ``tmp/`` for a blob writer."""
        return self.tmp_dir / f"{secrets.token_hex(16)}.part"

    def is_tmp_name(self, name: str) -> bool:
        return _TMP_NAME_RE.fullmatch(name) is not None

    # -- uploads -------------------------------------------------------------------------------

    def upload_dir(self, uuid: str) -> Path:
        """``root/uploads/<uuid>``; raises ``BLOB_UPLOAD_UNKNOWN`` for anything not uuid-shaped."""
        if not is_upload_uuid(uuid):
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, "invalid upload id", {"uuid": uuid})
        return self.uploads_dir / uuid

    def upload_data_path(self, uuid: str) -> Path:
        """``root/uploads/<uuid>/data``: the bytes received so far for a session."""
        return self.upload_dir(uuid) / UPLOAD_DATA_NAME


def _check_digest(digest: Digest) -> None:
    length = _HEX_LENGTHS.get(digest.algorithm)
    if length is None or len(digest.hex) != length or _HEX_RE.fullmatch(digest.hex) is None:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "invalid digest", {"digest": str(digest)})
