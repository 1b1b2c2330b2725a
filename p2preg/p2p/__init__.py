"""The peer-to-peer blob path: nodes stream blobs from each other over ``/p2p/v1/blobs/<digest>``.

Modules (one job each; see docs/p2p.md):

- ``auth``: HMAC request signing with the cluster keyring, clock-skew window, replay cache.
- ``routing``: the pure choice of sources for a digest (holders, fetchers, the HRW owner).
- ``penalties``: the short-lived penalty list of peers that failed or lied.
- ``membership``: the small membership protocol the p2p path needs, and a static in-memory one.
- ``server``: the ``GET``/``HEAD /p2p/v1/blobs/<digest>`` handlers.
- ``suspect``: ``POST /p2p/v1/blobs/<digest>/suspect``, a peer's "your bytes were wrong" report
  (the holder re-hashes its copy at once and drops it when rotten), and its sending side.
- ``source``: ``PeerBlobSource``, a ``fetch.BlobSource`` over HTTP with ``Range`` resume.
- ``node_glue``: ``P2P``, which wires membership + mirror + server + sources for ``node.py``.

This package must not import ``p2preg.node`` or ``p2preg.cli``.
"""
