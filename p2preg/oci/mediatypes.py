"""Media types of manifests, indexes and layers, and which ones are which kind.

Owns: the media type constants, the ``MANIFEST_TYPES`` / ``INDEX_TYPES`` sets and
``of_manifest_body`` (the type of a manifest that arrived without a usable Content-Type).
"""

from __future__ import annotations

import json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES


def of_manifest_body(body: bytes) -> str:
    """The media type of a manifest body: its own ``mediaType`` (required for Docker's types,
    optional in OCI), else an OCI index when it lists ``manifests``, else an OCI image manifest.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return OCI_MANIFEST
    if not isinstance(data, dict):
        return OCI_MANIFEST
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return OCI_INDEX if "manifests" in data else OCI_MANIFEST
