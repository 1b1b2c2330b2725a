"""Content digests: parsing per the OCI grammar and streaming verification.

Owns: ``Digest`` (a validated ``algorithm:hex`` value), ``parse_digest`` and ``DigestVerifier``
(hash bytes as they stream past, then compare). Only sha256 and sha512 are accepted; a digest is
also a file name in the store, so the grammar is strict (lowercase hex of the exact length).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from p2preg.oci.errors import ErrorCode, RegistryError

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def new_hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(value: str) -> bool:
    """True when ``value`` parses as a supported digest."""
    try:
        parse_digest(value)
    except RegistryError:
        return False
    return True


def parse_digest(value: str) -> Digest:
    """Parse ``algorithm:hex`` or raise ``DIGEST_INVALID`` (400)."""
    match = _DIGEST_RE.match(value)
    if match is None:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "invalid digest format", {"digest": value})
    algorithm, encoded = match.group(1), match.group(2)
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"unsupported digest algorithm {algorithm!r}",
            {"digest": value},
        )
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"{algorithm} digest must be {length} lowercase hex characters",
            {"digest": value},
        )
    return Digest(algorithm, encoded)


class DigestVerifier:
    """Hash a stream incrementally and tell whether it matches the expected digest."""

    def __init__(self, expected: Digest) -> None:
        self.expected = expected
        self._hasher = expected.new_hasher()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._hasher.update(chunk)
        self.size += len(chunk)

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._hasher.hexdigest())

    def verified(self) -> bool:
        return self.actual() == self.expected
