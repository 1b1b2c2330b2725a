"""Thin aiohttp handlers for the /v2 endpoints, one module per resource.

Each handler validates the path and query, calls the stores or the ``ContentSource`` and builds
the response; the rules live in ``p2preg.oci`` and ``p2preg.storage``. Handlers raise
``RegistryError`` for every failure; the error middleware writes the OCI JSON.
Must not import the mirror, upstream, gossip or fetch packages.
"""
