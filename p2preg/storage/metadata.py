"""Registry metadata in SQLite: repositories, blob links, manifests, tags, referrers, uploads.

Owns: ``MetadataStore`` (the one connection to ``metadata.db``), its versioned schema and the
records it returns (``ManifestRecord``, ``TagConfirmation``, ``UploadRecord``). The database runs
in WAL mode with ``synchronous=FULL`` (a returned call is durable) and foreign keys on; every
multi-row change is one ``BEGIN IMMEDIATE`` transaction. Every value reaches SQL as a bound
parameter: no statement is ever built from a name, tag or digest.

Methods are synchronous and short (one indexed query or one small transaction) so the event loop
may call them directly; a lock makes the store usable from worker threads as well.

Must not import aiohttp, the blob store or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from p2preg.clock import Clock, WallClock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import ErrorCode, RegistryError

# Each entry upgrades the schema from version i to i + 1 (PRAGMA user_version). Append only.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE repositories (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE blob_links (
            repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL CHECK (size >= 0),
            linked_at REAL NOT NULL,
            PRIMARY KEY (repo_id, digest)
        ) WITHOUT ROWID""",
        "CREATE INDEX blob_links_by_digest ON blob_links(digest)",
        """CREATE TABLE manifests (
            repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
            digest TEXT NOT NULL,
            media_type TEXT NOT NULL,
            size INTEGER NOT NULL CHECK (size >= 0),
            subject TEXT,
            artifact_type TEXT,
            annotations TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (repo_id, digest)
        ) WITHOUT ROWID""",
        "CREATE INDEX manifests_by_digest ON manifests(digest)",
        """CREATE INDEX manifests_by_subject ON manifests(repo_id, subject, artifact_type)
            WHERE subject IS NOT NULL""",
        """CREATE TABLE tags (
            repo_id INTEGER NOT NULL,
            name TEXT NOT NULL,
            digest TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (repo_id, name),
            FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        "CREATE INDEX tags_by_manifest ON tags(repo_id, digest)",
        """CREATE TABLE manifest_refs (
            repo_id INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            ref TEXT NOT NULL,
            PRIMARY KEY (repo_id, manifest, ref),
            FOREIGN KEY (repo_id, manifest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        "CREATE INDEX manifest_refs_by_ref ON manifest_refs(ref)",
        """CREATE TABLE uploads (
            uuid TEXT PRIMARY KEY,
            repo TEXT NOT NULL,
            offset_bytes INTEGER NOT NULL DEFAULT 0 CHECK (offset_bytes >= 0),
            started_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE blob_access (
            digest TEXT PRIMARY KEY,
            last_access REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX blob_access_by_time ON blob_access(last_access)",
    ),
    # 1 -> 2: when the mirror's upstream last confirmed where a tag points (survives restarts).
    # Existing tags start from ``updated_at``: a mirror writes a tag only right after its
    # upstream named the digest, so that is a confirmation time (a lower bound of the last one).
    (
        """CREATE TABLE tag_confirmations (
            repo_id INTEGER NOT NULL,
            tag TEXT NOT NULL,
            digest TEXT NOT NULL,
            confirmed_at REAL NOT NULL,
            PRIMARY KEY (repo_id, tag),
            FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        "CREATE INDEX tag_confirmations_by_manifest ON tag_confirmations(repo_id, digest)",
        """INSERT INTO tag_confirmations (repo_id, tag, digest, confirmed_at)
            SELECT repo_id, name, digest, updated_at FROM tags""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A manifest stored in a repository (its bytes are the blob named ``digest``)."""

    repo: str
    digest: str
    media_type: str
    size: int
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, str] | None
    created_at: float


@dataclass(frozen=True, slots=True)
class TagConfirmation:
    """Where a tag pointed (``digest``) when its upstream last said so, at ``confirmed_at``
    (wall-clock seconds)."""

    digest: str
    confirmed_at: float


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An upload session: ``offset`` bytes of ``uploads/<uuid>/data`` are durable."""

    uuid: str
    repo: str
    offset: int
    started_at: float


_MANIFEST_COLUMNS = (
    "r.name, m.digest, m.media_type, m.size, m.subject, m.artifact_type, m.annotations, "
    "m.created_at"
)


def _manifest(row: tuple[Any, ...]) -> ManifestRecord:
    annotations = json.loads(row[6]) if row[6] is not None else None
    return ManifestRecord(row[0], row[1], row[2], row[3], row[4], row[5], annotations, row[7])


def _limit(n: int | None) -> int:
    if n is None:
        return -1  # SQLite: no limit
    if n < 0:
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"n": n})
    return n


class MetadataStore:
    """The SQLite metadata of one node. ``clock`` stamps stored times (wall clock by default)."""

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock: Clock = clock if clock is not None else WallClock()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._scalar("PRAGMA user_version"))

    # -- repositories ----------------------------------------------------------------------------

    def repositories(self, last: str | None = None, n: int | None = None) -> list[str]:
        """Repository names in lexical (bytewise) order, after ``last``, at most ``n``."""
        rows = self._all(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
            (last or "", _limit(n)),
        )
        return [row[0] for row in rows]

    def repository_exists(self, repo: str) -> bool:
        return self._one("SELECT 1 FROM repositories WHERE name = ?", (repo,)) is not None

    # -- blob links ------------------------------------------------------------------------------

    def link_blob(self, repo: str, digest: str | Digest, size: int) -> None:
        """Make ``digest`` visible in ``repo`` (creating the repository); idempotent."""
        with self._tx() as db:
            repo_id = self._repo_id(db, repo, create=True)
            db.execute(
                "INSERT INTO blob_links (repo_id, digest, size, linked_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repo_id, digest) DO NOTHING",
                (repo_id, str(digest), size, self._clock.now()),
            )

    def unlink_blob(self, repo: str, digest: str | Digest) -> bool:
        """Hide ``digest`` from ``repo``; False when it was not linked. Empty repos disappear."""
        with self._tx() as db:
            repo_id = self._repo_id(db, repo)
            if repo_id is None:
                return False
            cursor = db.execute(
                "DELETE FROM blob_links WHERE repo_id = ? AND digest = ?", (repo_id, str(digest))
            )
            self._prune_repo(db, repo_id)
            return cursor.rowcount > 0

    def manifest_rooted(self, digest: str) -> bool:
        """True when a manifest is stored as ``digest`` or references it, in any repository."""
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM manifests WHERE digest = ?)"
            " OR EXISTS (SELECT 1 FROM manifest_refs WHERE ref = ?)",
            (digest, digest),
        )
        return bool(row[0])

    def blob_link_states(self, digest: str) -> list[tuple[str, float, float, bool, bool]]:
        """Every link of ``digest``, ordered by repository, as (repository, linked at, the
        repository's newest link time, an upload open in it, a manifest of it references
        ``digest``): what garbage collection needs to tell a live link from a dead one."""
        rows = self._all(
            "SELECT r.name, l.linked_at,"
            " (SELECT MAX(o.linked_at) FROM blob_links o WHERE o.repo_id = l.repo_id),"
            " EXISTS (SELECT 1 FROM uploads u WHERE u.repo = r.name),"
            " EXISTS (SELECT 1 FROM manifest_refs m WHERE m.ref = l.digest"
            "         AND m.repo_id = l.repo_id)"
            " FROM blob_links l JOIN repositories r ON r.id = l.repo_id"
            " WHERE l.digest = ? ORDER BY r.name",
            (digest,),
        )
        return [(str(r[0]), float(r[1]), float(r[2]), bool(r[3]), bool(r[4])) for r in rows]

    def blob_linked(self, repo: str, digest: str | Digest) -> bool:
        return (
            self._one(
                "SELECT 1 FROM blob_links JOIN repositories r ON r.id = repo_id "
                "WHERE r.name = ? AND digest = ?",
                (repo, str(digest)),
            )
            is not None
        )

    def blob_referenced(self, digest: str | Digest) -> bool:
        """True when any repository links ``digest``, stores it as a manifest or references it."""
        key = str(digest)
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM blob_links WHERE digest = ?) "
            "OR EXISTS (SELECT 1 FROM manifests WHERE digest = ?) "
            "OR EXISTS (SELECT 1 FROM manifest_refs WHERE ref = ?)",
            (key, key, key),
        )
        return bool(row[0])

    # -- manifests and tags ----------------------------------------------------------------------

    def put_manifest(
        self,
        repo: str,
        digest: str | Digest,
        media_type: str,
        size: int,
        *,
        tag: str | None = None,
        subject: str | Digest | None = None,
        artifact_type: str | None = None,
        annotations: dict[str, str] | None = None,
        references: Iterable[str | Digest] = (),
    ) -> None:
        """Record a manifest, point ``tag`` at it (moving the tag) and remember what it references.

        One transaction: after a crash either all of it is there or none of it.
        """
        key = str(digest)
        annotations_json = json.dumps(annotations, sort_keys=True) if annotations else None
        with self._tx() as db:
            repo_id = self._repo_id(db, repo, create=True)
            now = self._clock.now()
            db.execute(
                "INSERT INTO manifests (repo_id, digest, media_type, size, subject, artifact_type,"
                " annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repo_id, digest) DO UPDATE SET media_type = excluded.media_type,"
                " size = excluded.size, subject = excluded.subject,"
                " artifact_type = excluded.artifact_type, annotations = excluded.annotations",
                (
                    repo_id,
                    key,
                    media_type,
                    size,
                    None if subject is None else str(subject),
                    artifact_type,
                    annotations_json,
                    now,
                ),
            )
            if tag is not None:
                db.execute(
                    "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest,"
                    " updated_at = excluded.updated_at",
                    (repo_id, tag, key, now),
                )
            db.executemany(
                "INSERT OR IGNORE INTO manifest_refs (repo_id, manifest, ref) VALUES (?, ?, ?)",
                [(repo_id, key, str(ref)) for ref in references],
            )

    def get_manifest(self, repo: str, digest: str | Digest) -> ManifestRecord | None:
        row = self._one(
            f"SELECT {_MANIFEST_COLUMNS} FROM manifests m JOIN repositories r ON r.id = m.repo_id"
            " WHERE r.name = ? AND m.digest = ?",
            (repo, str(digest)),
        )
        return None if row is None else _manifest(row)

    def manifest_references(self, repo: str, digest: str | Digest) -> list[str]:
        """The digests (config, layers, child manifests) a stored manifest references."""
        rows = self._all(
            "SELECT ref FROM manifest_refs JOIN repositories r ON r.id = repo_id"
            " WHERE r.name = ? AND manifest = ? ORDER BY ref",
            (repo, str(digest)),
        )
        return [row[0] for row in rows]

    def resolve_tag(self, repo: str, tag: str) -> str | None:
        """The manifest digest ``tag`` points at in ``repo``, or None."""
        row = self._one(
            "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id"
            " WHERE r.name = ? AND t.name = ?",
            (repo, tag),
        )
        return None if row is None else str(row[0])

    def confirm_tag(
        self, repo: str, tag: str, digest: str | Digest, confirmed_at: float
    ) -> bool:
        """Record that ``tag`` pointed at the stored manifest ``digest`` at ``confirmed_at``
        (the mirror's upstream said so, or a peer that heard it from its upstream then), and
        point the tag there. The later confirmation wins: one older than the tag's recorded
        confirmation changes nothing. False when nothing changed or the manifest is not stored
        in ``repo``. One transaction.
        """
        key = str(digest)
        with self._tx() as db:
            repo_id = self._repo_id(db, repo)
            if repo_id is None or db.execute(
                "SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?", (repo_id, key)
            ).fetchone() is None:
                return False
            row = db.execute(
                "SELECT c.confirmed_at FROM tags t JOIN tag_confirmations c"
                " ON c.repo_id = t.repo_id AND c.tag = t.name AND c.digest = t.digest"
                " WHERE t.repo_id = ? AND t.name = ?",
                (repo_id, tag),
            ).fetchone()
            if row is not None and float(row[0]) >= confirmed_at:
                return False
            db.execute(
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest,"
                " updated_at = excluded.updated_at WHERE digest != excluded.digest",
                (repo_id, tag, key, self._clock.now()),
            )
            db.execute(
                "INSERT INTO tag_confirmations (repo_id, tag, digest, confirmed_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (repo_id, tag) DO UPDATE SET"
                " digest = excluded.digest, confirmed_at = excluded.confirmed_at",
                (repo_id, tag, key, confirmed_at),
            )
            return True

    def tag_confirmation(self, repo: str, tag: str) -> TagConfirmation | None:
        """The last confirmation of where ``tag`` points now, or None (no such tag, or it was
        never confirmed at its current digest: e.g. moved by a push since)."""
        row = self._one(
            "SELECT t.digest, c.confirmed_at FROM tags t"
            " JOIN repositories r ON r.id = t.repo_id"
            " JOIN tag_confirmations c"
            " ON c.repo_id = t.repo_id AND c.tag = t.name AND c.digest = t.digest"
            " WHERE r.name = ? AND t.name = ?",
            (repo, tag),
        )
        return None if row is None else TagConfirmation(str(row[0]), float(row[1]))

    def tags(self, repo: str, last: str | None = None, n: int | None = None) -> list[str]:
        """Tags of ``repo`` in lexical (bytewise) order, after ``last``, at most ``n``."""
        rows = self._all(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id"
            " WHERE r.name = ? AND t.name > ? ORDER BY t.name LIMIT ?",
            (repo, last or "", _limit(n)),
        )
        return [row[0] for row in rows]

    def manifest_tags(self, repo: str, digest: str | Digest) -> list[str]:
        """The tags pointing at one manifest, sorted."""
        rows = self._all(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id"
            " WHERE r.name = ? AND t.digest = ? ORDER BY t.name",
            (repo, str(digest)),
        )
        return [row[0] for row in rows]

    def delete_tag(self, repo: str, tag: str) -> bool:
        """Remove ``tag`` (the manifest stays); False when there was no such tag."""
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM tags WHERE name = ?"
                " AND repo_id = (SELECT id FROM repositories WHERE name = ?)",
                (tag, repo),
            )
            return cursor.rowcount > 0

    def delete_manifest(self, repo: str, digest: str | Digest) -> bool:
        """Remove a manifest with its tags and references; False when it was not there.

        Referrers whose ``subject`` is this manifest stay (the spec allows dangling subjects).
        """
        with self._tx() as db:
            repo_id = self._repo_id(db, repo)
            if repo_id is None:
                return False
            cursor = db.execute(
                "DELETE FROM manifests WHERE repo_id = ? AND digest = ?", (repo_id, str(digest))
            )
            self._prune_repo(db, repo_id)
            return cursor.rowcount > 0

    def referrers(
        self, repo: str, subject: str | Digest, artifact_type: str | None = None
    ) -> list[ManifestRecord]:
        """Manifests in ``repo`` whose ``subject`` is ``subject``, optionally of one artifact type.

        Ordered by digest, so the answer is stable.
        """
        sql = (
            f"SELECT {_MANIFEST_COLUMNS} FROM manifests m JOIN repositories r ON r.id = m.repo_id"
            " WHERE r.name = ? AND m.subject = ?"
        )
        params: tuple[Any, ...] = (repo, str(subject))
        if artifact_type is not None:
            sql += " AND m.artifact_type = ?"
            params += (artifact_type,)
        return [_manifest(row) for row in self._all(sql + " ORDER BY m.digest", params)]

    # -- access times (for eviction) -------------------------------------------------------------

    def touch(self, digest: str | Digest, now: float) -> None:
        """Record that ``digest`` was served or stored at ``now`` (never moves backwards)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO blob_access (digest, last_access) VALUES (?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET"
                " last_access = max(last_access, excluded.last_access)",
                (str(digest), now),
            )

    def touch_many(self, accesses: Iterable[tuple[str | Digest, float]]) -> None:
        """``touch`` for a batch in one transaction (one fsync): what a hot read path should use."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO blob_access (digest, last_access) VALUES (?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET"
                " last_access = max(last_access, excluded.last_access)",
                [(str(digest), now) for digest, now in accesses],
            )

    def last_access(self, digest: str | Digest) -> float | None:
        row = self._one("SELECT last_access FROM blob_access WHERE digest = ?", (str(digest),))
        return None if row is None else float(row[0])

    def least_recently_used(self, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` digests touched longest ago, oldest first, with their access times."""
        rows = self._all(
            "SELECT digest, last_access FROM blob_access ORDER BY last_access, digest LIMIT ?",
            (_limit(limit),),
        )
        return [(row[0], float(row[1])) for row in rows]

    def forget_access(self, digest: str | Digest) -> None:
        with self._lock:
            self._db.execute("DELETE FROM blob_access WHERE digest = ?", (str(digest),))

    # -- upload sessions -------------------------------------------------------------------------

    def create_upload(self, repo: str, uuid: str, now: float) -> UploadRecord:
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads (uuid, repo, offset_bytes, started_at) VALUES (?, ?, 0, ?)",
                (uuid, repo, now),
            )
        return UploadRecord(uuid, repo, 0, now)

    def get_upload(self, uuid: str) -> UploadRecord | None:
        row = self._one(
            "SELECT uuid, repo, offset_bytes, started_at FROM uploads WHERE uuid = ?", (uuid,)
        )
        return None if row is None else UploadRecord(row[0], row[1], row[2], row[3])

    def set_upload_offset(self, uuid: str, offset: int) -> bool:
        """Record that ``offset`` bytes are durable; False when the session is gone."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE uploads SET offset_bytes = ? WHERE uuid = ?", (offset, uuid)
            )
            return cursor.rowcount > 0

    def delete_upload(self, uuid: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM uploads WHERE uuid = ?", (uuid,))
            return cursor.rowcount > 0

    def uploads(self) -> list[UploadRecord]:
        rows = self._all(
            "SELECT uuid, repo, offset_bytes, started_at FROM uploads ORDER BY started_at, uuid", ()
        )
        return [UploadRecord(row[0], row[1], row[2], row[3]) for row in rows]

    # -- internals -------------------------------------------------------------------------------

    def _configure(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this p2preg understands up to "
                    f"{SCHEMA_VERSION}. Run a newer p2preg or use another data directory."
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")  # an int constant

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _repo_id(self, db: sqlite3.Connection, repo: str, *, create: bool = False) -> int | None:
        row = db.execute("SELECT id FROM repositories WHERE name = ?", (repo,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        cursor = db.execute(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?)", (repo, self._clock.now())
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _prune_repo(self, db: sqlite3.Connection, repo_id: int) -> None:
        db.execute(
            "DELETE FROM repositories WHERE id = ?"
            " AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo_id = ?)"
            " AND NOT EXISTS (SELECT 1 FROM blob_links WHERE repo_id = ?)",
            (repo_id, repo_id, repo_id),
        )

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _scalar(self, sql: str) -> Any:
        with self._lock:
            return self._db.execute(sql).fetchone()[0]
