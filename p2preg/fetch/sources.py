"""Where a blob's bytes can come from, as the fetcher sees it.

Owns: the ``BlobSource`` / ``SourceStream`` protocols and ``UpstreamBlobSource`` (the adapter over
``UpstreamClient.open_blob``). A source opens a stream at a byte offset (so a fill can resume on
the next source where the previous one broke off) and says the blob's size when it knows it.
Peers will add their own ``BlobSource`` (``kind = "peer"``): the fetcher needs no change.
Must not import aiohttp (the upstream client hides it), the registry package or gossip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol

from p2preg.oci.digest import Digest
from p2preg.upstream.client import UpstreamClient


class SourceStream(Protocol):
    """An open stream of a blob's bytes from ``offset``; ``size`` is the whole blob's, if known."""

    offset: int
    size: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def __aenter__(self) -> SourceStream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BlobSource(Protocol):
    """One place to fetch blobs from. ``kind`` is the metrics label (``upstream``, ``peer``)."""

    name: str
    kind: str

    async def open(self, digest: Digest, offset: int) -> SourceStream:
        """Start streaming ``digest`` from ``offset``; raise ``UpstreamError``/``OSError``."""
        ...


class UpstreamBlobSource:
    """A repository on an upstream registry as a ``BlobSource``."""

    kind = "upstream"

    def __init__(self, client: UpstreamClient, repository: str) -> None:
        self._client = client
        self._repository = repository
        self.name = f"upstream {client.config.registry}"

    async def open(self, digest: Digest, offset: int) -> SourceStream:
        return await self._client.open_blob(self._repository, digest, offset)
