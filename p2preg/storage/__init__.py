"""Content-addressable blob store, SQLite metadata and upload sessions.

Owns everything under the node's data directory. See docs/storage.md for the on-disk layout.
Must not import aiohttp or the registry, upstream, gossip or fetch packages.
"""
