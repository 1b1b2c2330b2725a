"""The state every /v2 handler reads: ``RegistryContext`` and its typed application key.

Owns: ``RegistryContext`` (the stores, the clock, the mode, the manifest size limit, the pull
``ContentSource`` and the tags/catalog ``Listing``) and ``CONTEXT_KEY``. Kept apart from ``app``
so handlers can import it without a cycle. Must not import aiohttp handlers, the mirror, upstream,
gossip or fetch packages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from p2preg.clock import Clock
from p2preg.oci.manifest import MAX_MANIFEST_BYTES
from p2preg.registry.content import ContentSource, LocalContentSource
from p2preg.registry.listing import Listing, LocalListing
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

READ_ONLY_MESSAGE = "this node is a read-only mirror: push to the upstream registry instead"


@dataclass
class RegistryContext:
    """Everything the /v2 handlers use.

    ``content`` is the pull read path and defaults to ``LocalContentSource`` over ``blobs`` and
    ``meta``; the mirror passes its own. ``listing`` (tags and catalog) likewise defaults to
    ``LocalListing`` over ``meta``. ``read_only`` (mirror mode) refuses every write with
    ``UNSUPPORTED`` and ``read_only_message``. ``max_manifest_bytes`` bounds manifest PUT bodies
    (413 ``MANIFEST_INVALID`` beyond it).
    """

    blobs: BlobStore
    meta: MetadataStore
    uploads: UploadManager
    clock: Clock
    read_only: bool = False
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    content: ContentSource = field(default=None)  # type: ignore[assignment]
    read_only_message: str = READ_ONLY_MESSAGE
    listing: Listing = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.content is None:
            self.content = LocalContentSource(self.blobs, self.meta)
        if self.listing is None:
            self.listing = LocalListing(self.meta)


CONTEXT_KEY: web.AppKey[RegistryContext] = web.AppKey("p2preg_registry", RegistryContext)
