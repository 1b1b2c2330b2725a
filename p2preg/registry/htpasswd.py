"""An htpasswd file of bcrypt entries: parsing, hot reload, verification, and making new lines.

Owns: ``parse_htpasswd`` (text -> users; only ``$2y$``/``$2b$``/``$2a$`` bcrypt hashes, anything
else is a ``HtpasswdError`` naming the file and line, never the hash), ``make_htpasswd_line``
(what ``p2preg htpasswd USER`` prints; same format as ``htpasswd -B``) and ``Htpasswd``:

- the file is re-read when its mtime, size or inode changes, looked at no more than once per
  ``check_interval_s`` (a stat, not a read, per check). A broken edit keeps the last good entries
  and logs an error; a broken file at start-up raises.
- bcrypt runs in a worker thread (tens of milliseconds each), at most ``max_concurrent_checks`` at
  once, so a flood of bad logins cannot starve the event loop or the default thread pool.
- successful checks are cached for ``cache_ttl_s`` under a keyed BLAKE2b hash of (user, password,
  stored hash): no plaintext is kept, and a changed password invalidates its entries at once.
- an unknown user costs one bcrypt check too, so timing does not reveal which users exist.

Passwords are UTF-8 encoded and, as bcrypt itself does, only their first 72 bytes count.

Must not import aiohttp or other p2preg modules except ``p2preg.clock``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections import OrderedDict
from pathlib import Path

import bcrypt

from p2preg.clock import Clock, MonotonicClock

log = logging.getLogger(__name__)

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
BCRYPT_MAX_PASSWORD_BYTES = 72
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_USER_FORBIDDEN = re.compile(r"[:\x00-\x1f\x7f]")


class HtpasswdError(ValueError):
    """The htpasswd file (or a user name) cannot be used; the message says where and why."""


def _describe_bad_hash(hashed: str) -> str:
    if hashed.startswith("$apr1$"):
        return "an MD5 (apr1) hash"
    if hashed.startswith("{SHA}"):
        return "a SHA-1 hash"
    if hashed.startswith(("$5$", "$6$")):
        return "a SHA-crypt hash"
    if hashed.startswith("$2"):
        return "a malformed bcrypt hash"
    return "not a bcrypt hash"


def parse_htpasswd(text: str, *, source: str = "htpasswd") -> dict[str, bytes]:
    """Users and their bcrypt hashes; blank lines and ``#`` comments are ignored."""
    entries: dict[str, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{source} line {lineno}: expected 'user:bcrypt-hash'")
        if _BCRYPT_RE.fullmatch(hashed) is None:
            raise HtpasswdError(
                f"{source} line {lineno} (user {user!r}): {_describe_bad_hash(hashed)}; only "
                f"bcrypt hashes ({', '.join(BCRYPT_PREFIXES)}) are accepted. Recreate the entry "
                f"with `htpasswd -B` or `p2preg htpasswd {user}`."
            )
        if user in entries:
            raise HtpasswdError(f"{source} line {lineno}: user {user!r} appears twice")
        entries[user] = hashed.encode("ascii")
    return entries


def _password_bytes(password: str) -> bytes:
    return password.encode("utf-8")[:BCRYPT_MAX_PASSWORD_BYTES]


def validate_user_name(user: str) -> None:
    """Raise ``HtpasswdError`` when ``user`` cannot be stored in an htpasswd line."""
    if not user or user != user.strip() or _USER_FORBIDDEN.search(user):
        raise HtpasswdError(
            f"invalid user name {user!r}: it must be non-empty, without ':', control characters "
            "or surrounding spaces"
        )


def make_htpasswd_line(user: str, password: str, *, rounds: int = 10) -> str:
    """``user:$2y$...`` (no newline), the format ``htpasswd -B`` writes."""
    validate_user_name(user)
    if not 4 <= rounds <= 31:
        raise HtpasswdError(f"bcrypt cost must be between 4 and 31, not {rounds}")
    hashed = bcrypt.hashpw(_password_bytes(password), bcrypt.gensalt(rounds=rounds)).decode()
    return f"{user}:$2y${hashed[4:]}"


class Htpasswd:
    """An htpasswd file kept in memory, reloaded when it changes on disk."""

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Clock | None = None,
        check_interval_s: float = 1.0,
        cache_ttl_s: float = 300.0,
        cache_size: int = 1024,
        max_concurrent_checks: int = 4,
    ) -> None:
        self.path = Path(path)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._check_interval_s = check_interval_s
        self._cache_ttl_s = cache_ttl_s
        self._cache_size = cache_size
        self._checks = asyncio.Semaphore(max_concurrent_checks)
        self._cache_secret = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._dummy_hash: bytes | None = None
        self._entries, self._signature = self._load()
        self._next_check = self._clock.now() + check_interval_s
        self.reloads = 0

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._entries)

    def _load(self) -> tuple[dict[str, bytes], tuple[int, int, int]]:
        try:
            stat = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HtpasswdError(f"cannot read htpasswd file {self.path}: {exc}") from exc
        entries = parse_htpasswd(text, source=str(self.path))
        return entries, (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def maybe_reload(self) -> bool:
        """Re-read the file if it changed; at most one stat per ``check_interval_s``."""
        now = self._clock.now()
        if now < self._next_check:
            return False
        self._next_check = now + self._check_interval_s
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            log.error(
                "htpasswd file %s unreadable, keeping %d users: %s",
                self.path,
                len(self._entries),
                exc,
            )
            return False
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._signature:
            return False
        try:
            entries, signature = self._load()
        except HtpasswdError as exc:
            log.error("htpasswd reload failed, keeping %d users: %s", len(self._entries), exc)
            return False
        self._entries, self._signature = entries, signature
        self._cache.clear()
        self.reloads += 1
        log.info("htpasswd %s reloaded: %d users", self.path, len(entries))
        return True

    def _cache_key(self, user: str, password: str, hashed: bytes) -> bytes:
        digest = hashlib.blake2b(key=self._cache_secret, digest_size=32)
        for part in (user.encode("utf-8"), password.encode("utf-8"), hashed):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.digest()

    def _cached(self, key: bytes, now: float) -> bool:
        expires = self._cache.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self._cache[key]
            return False
        self._cache.move_to_end(key)
        return True

    def _remember(self, key: bytes, now: float) -> None:
        self._cache[key] = now + self._cache_ttl_s
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _checkpw(self, password: str, hashed: bytes) -> bool:
        async with self._checks:
            try:
                return await asyncio.to_thread(bcrypt.checkpw, _password_bytes(password), hashed)
            except ValueError:  # a hash bcrypt rejects despite our grammar check
                return False

    async def verify(self, user: str, password: str) -> bool:
        """True when ``user`` exists and ``password`` matches its hash."""
        self.maybe_reload()
        hashed = self._entries.get(user)
        if hashed is None:
            if self._dummy_hash is None:
                salt = bcrypt.gensalt(rounds=10)
                self._dummy_hash = await asyncio.to_thread(bcrypt.hashpw, b"p2preg", salt)
            await self._checkpw(password, self._dummy_hash)
            return False
        key = self._cache_key(user, password, hashed)
        if self._cached(key, self._clock.now()):
            return True
        if not await self._checkpw(password, hashed):
            return False
        if self._entries.get(user) == hashed:  # not replaced by a reload meanwhile
            self._remember(key, self._clock.now())
        return True
