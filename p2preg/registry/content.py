"""The pull read path behind the /v2 handlers: where manifests and blobs are read from.

Owns: the ``ContentSource`` protocol, its result types ``ManifestContent`` and ``BlobContent``,
and ``LocalContentSource`` (the node's own store: the default). The mirror plugs in another
``ContentSource`` that fetches from peers or the upstream; the handlers never know the difference.

Contract of a ``ContentSource`` (every implementation must keep it):

- ``manifest(repo, reference, accept)``: ``repo`` is a validated name, ``reference`` a validated
  tag or digest string, ``accept`` the client's media types best first (``()`` when it sent no
  Accept). Returns the stored bytes and their media type; raises ``RegistryError``
  (``NAME_UNKNOWN`` / ``MANIFEST_UNKNOWN``, or ``UPSTREAM_ERROR``...) otherwise.
- ``blob(repo, digest, byte_range, want_body=...)``: ``byte_range`` is the client's unresolved
  ``RangeSpec`` or None. Returns a ``BlobContent`` whose ``byte_range`` is resolved against the
  blob's size (``ranges.resolve_range``, which raises the 416), with either ``path`` (a committed
  file served with sendfile) or ``chunks`` (exactly the bytes of ``byte_range``, or the whole blob).
  A blob still arriving may also come as ``growing`` (a ``GrowingFile``: the same bytes as
  ``chunks``, sent with sendfile range by range as they reach the file); a server that uses it
  closes ``chunks`` unread.
  With ``want_body=False`` (HEAD) neither is needed. Raises ``BLOB_UNKNOWN`` when the blob is not
  visible in ``repo``. ``source`` names where the bytes come from (``local``, ``peer``,
  ``upstream``): the metrics middleware counts bytes by it.

Integrity (``LocalContentSource``): a manifest's bytes are checked against its digest on every
read (``BlobStore.read_verified``); a mismatch quarantines the file and answers
``MANIFEST_UNKNOWN`` saying so. Blob bodies are not re-hashed on read (sendfile never touches
them; clients verify every blob they pull): the background scrub and peers' wrong-bytes reports
find a rotten blob, and from then on its GET/HEAD answers ``BLOB_UNKNOWN`` ("quarantined; push
it again") instead of its bytes.

Must not import aiohttp or the handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.ranges import ByteRange, RangeSpec, resolve_range
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore


@dataclass(frozen=True, slots=True)
class ManifestContent:
    """A manifest's exact bytes, its media type and its digest."""

    media_type: str
    digest: Digest
    body: bytes


class GrowingFile(Protocol):
    """A file still being written, whose bytes of one response may be sent as they land."""

    def open_file(self) -> BinaryIO:
        """Open the file (a local file just created: quick enough for the event loop); raises
        ``RegistryError`` when it is already gone."""
        ...

    def ranges(self) -> AsyncIterator[tuple[int, int]]:
        """``(offset, count)`` of the file, in order and contiguous, as they may be sent; the
        counts add up to the response's length. Raises when the response must be aborted."""
        ...


@dataclass(frozen=True, slots=True)
class BlobContent:
    """A blob (or a range of it) ready to serve. See the module docstring for the fields' rules."""

    digest: Digest
    size: int
    byte_range: ByteRange | None = None
    path: Path | None = None
    chunks: AsyncIterator[bytes] | None = None
    source: str = "local"
    growing: GrowingFile | None = None


class ContentSource(Protocol):
    """Where the pull handlers read manifests and blobs from (see the module docstring)."""

    async def manifest(
        self, repo: str, reference: str, accept: Sequence[str]
    ) -> ManifestContent: ...

    async def blob(
        self,
        repo: str,
        digest: Digest,
        byte_range: RangeSpec | None,
        *,
        want_body: bool = True,
    ) -> BlobContent: ...


class LocalContentSource:
    """Reads from the node's own store: manifests by tag or digest, blobs linked to the repo.

    Content negotiation: a repository holds exactly one representation of each manifest, so it is
    served whatever ``accept`` says (as CNCF Distribution 3 does); the client checks Content-Type.
    """

    def __init__(self, blobs: BlobStore, meta: MetadataStore) -> None:
        self._blobs = blobs
        self._meta = meta

    async def manifest(self, repo: str, reference: str, accept: Sequence[str]) -> ManifestContent:
        if ":" in reference:
            digest = parse_digest(reference)
        else:
            resolved = self._meta.resolve_tag(repo, reference)
            if resolved is None:
                raise self._manifest_unknown(repo, reference)
            digest = parse_digest(resolved)
        record = self._meta.get_manifest(repo, str(digest))
        if record is None:
            raise self._manifest_unknown(repo, reference)
        try:
            body = await self._blobs.read_verified(digest)
        except RegistryError:  # absent, or CorruptBlob (quarantined just now)
            if self._blobs.is_quarantined(digest):
                raise RegistryError(
                    ErrorCode.MANIFEST_UNKNOWN,
                    "the stored manifest failed its integrity check and was quarantined; "
                    "push it again",
                    {"name": repo, "reference": reference, "digest": str(digest)},
                ) from None
            raise self._manifest_unknown(repo, reference) from None
        return ManifestContent(media_type=record.media_type, digest=digest, body=body)

    async def blob(
        self,
        repo: str,
        digest: Digest,
        byte_range: RangeSpec | None,
        *,
        want_body: bool = True,
    ) -> BlobContent:
        linked = self._meta.blob_linked(repo, str(digest))
        size = self._blobs.size(digest) if linked else None
        if size is None:
            if linked and self._blobs.is_quarantined(digest):
                raise RegistryError(
                    ErrorCode.BLOB_UNKNOWN,
                    "the stored blob failed its integrity check and was quarantined; push it again",
                    {"repository": repo, "digest": str(digest)},
                )
            raise RegistryError(
                ErrorCode.BLOB_UNKNOWN,
                "blob unknown to this repository",
                {"repository": repo, "digest": str(digest)},
            )
        resolved = None if byte_range is None else resolve_range(byte_range, size)
        return BlobContent(
            digest=digest,
            size=size,
            byte_range=resolved,
            path=self._blobs.path(digest) if want_body else None,
            source="local",
        )

    def _manifest_unknown(self, repo: str, reference: str) -> RegistryError:
        if not self._meta.repository_exists(repo):
            return RegistryError(
                ErrorCode.NAME_UNKNOWN, "repository name not known to registry", {"name": repo}
            )
        return RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            "manifest unknown",
            {"name": repo, "reference": reference},
        )
