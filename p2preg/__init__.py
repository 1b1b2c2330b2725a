"""p2preg: a peer-to-peer OCI/Docker registry node.

Package face only: the version. Subpackages own one concern each (see docs/architecture.md):
``oci`` (pure protocol rules), ``storage`` (content-addressable store and metadata), ``registry``
(the /v2 HTTP API), ``upstream`` (origin registry client), ``gossip`` (membership and catalog),
``fetch`` (the pull path resolver); ``node`` wires one node together and ``cli`` is the command.
"""

__version__ = "0.1.0"
