"""Content-addressable blob store, SQLite metadata and upload sessions.

Owns everything under the node's data directory. See docs/storage.md for the on-disk layout and
CONTRACT.md for the API other packages use: ``layout`` (paths), ``blobs`` (BlobStore/BlobWriter),
``metadata`` (MetadataStore), ``uploads`` (UploadManager), ``gc`` (collect_garbage), ``lock``
(DataDirLock); ``sink`` is internal.
Must not import aiohttp or the registry, upstream, gossip or fetch packages.
"""
