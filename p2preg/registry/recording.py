"""Access-time recording around a pull ``ContentSource``, for LRU eviction.

Owns: ``RecordingContentSource``, a decorator that forwards every call to the wrapped source and,
on success, records an access of the manifest or blob served, when this node holds its file (a
blob still arriving is protected by being in progress, and by its mtime once committed). The
recorder batches in memory; nothing here touches SQLite per request.
Must not import aiohttp handlers, the mirror or the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from p2preg.oci.digest import Digest
from p2preg.registry.content import BlobContent, ContentSource, ManifestContent
from p2preg.registry.ranges import RangeSpec
from p2preg.storage.blobs import BlobStore


class Recorder(Protocol):
    def touch(self, digest: str | Digest) -> None: ...


class RecordingContentSource:
    """A ``ContentSource`` that records accesses of what it serves (committed blobs only)."""

    def __init__(
        self,
        inner: ContentSource,
        recorder: Recorder,
        blobs: BlobStore,
    ) -> None:
        self.inner = inner
        self._recorder = recorder
        self._blobs = blobs

    def _touch(self, digest: Digest) -> None:
        if self._blobs.has(digest):
            self._recorder.touch(digest)

    async def manifest(
        self, repo: str, reference: str, accept: Sequence[str]
    ) -> ManifestContent:
        content = await self.inner.manifest(repo, reference, accept)
        self._touch(content.digest)
        return content

    async def blob(
        self,
        repo: str,
        digest: Digest,
        byte_range: RangeSpec | None,
        *,
        want_body: bool = True,
    ) -> BlobContent:
        content = await self.inner.blob(repo, digest, byte_range, want_body=want_body)
        self._touch(digest)
        return content

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # close(), route(), fetcher... of the wrapped source

