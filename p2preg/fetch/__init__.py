"""The pull path resolver for blobs a node does not hold yet.

Owns: the ``BlobSource`` protocol (where bytes may come from: the upstream today, peers later),
``BlobFetcher`` (one fill per digest per node, streamed into a storage ``BlobWriter`` across an
ordered list of sources with resume by offset) and ``follow`` (a client's view of a fill: the
growing file from any offset, the last byte held back until the digest is verified). Must not
import aiohttp, the registry package or gossip; sources adapt their own transports.
"""
