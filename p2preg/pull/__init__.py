"""The pull path: how a node gets content it does not hold.

``mirror`` (``MirrorContentSource``: manifests, tags and blobs through the local store, the
peers and the upstreams; ``create_mirror``) and ``swarm_source`` (a non-owner's fill piece by
piece from many peers). The fill engine is ``p2preg.fetch`` (one fill per digest, sequential
sources, readers following the file), the piece rules are ``p2preg.swarm`` (pure), the peer
client is ``p2p.source``/``p2p.auth``, storage and the upstream client below.

Imports run one way: the HTTP handlers (``registry``'s /v2 handlers and middleware, ``p2p``'s
endpoint and its node glue) call this package; it calls ``fetch``, ``swarm``, ``storage``,
``upstream`` and the peer client, never a handler, the node or gossip. (``mirror`` still
uses four small modules of ``registry`` that are vocabulary rather than handlers: the content
types it returns, ``ranges``, the request keys and the metrics object; they belong in a shared
module and are left where they are for now.)
"""
