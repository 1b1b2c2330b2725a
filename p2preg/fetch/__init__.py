"""The pull path resolver for blobs a node does not hold yet.

Owns: the ``BlobSource`` protocol (where bytes may come from: the upstream today, peers later),
``BlobFetcher`` (one fill per digest per node, streamed into a storage ``BlobWriter`` across an
ordered list of sources with resume by offset) and ``FollowedSpan`` / ``follow`` (a client's
view of a fill: ranges of the growing file to send from any offset, or its bytes, the last byte
held back until the digest is verified). Must not
import aiohttp, the registry package or gossip; sources adapt their own transports.
"""
