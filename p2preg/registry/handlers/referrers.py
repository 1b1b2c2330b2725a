"""The referrers API: ``GET /v2/<name>/referrers/<digest>[?artifactType=T]``.

Owns: building the OCI image index of the manifests whose ``subject`` is ``<digest>`` (each
descriptor with ``artifactType`` and ``annotations``), the ``artifactType`` filter and its
``OCI-Filters-Applied: artifactType`` header. ``Content-Type`` is exactly
``application/vnd.oci.image.index.v1+json`` (no charset parameter). Always 200 with an index
(empty when nothing refers to the digest, even in an unknown repository), as the spec requires;
a malformed digest is 400.
Must not import other handler modules.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from p2preg.oci import mediatypes
from p2preg.registry.handlers.common import API_VERSION, context, digest_param, repo_name


async def list_referrers(request: web.Request) -> web.Response:
    """The index of manifests referring to the digest, optionally filtered by artifact type."""
    name = repo_name(request)
    subject = digest_param(request)
    artifact_type = request.query.get("artifactType") or None
    records = context(request).meta.referrers(name, str(subject), artifact_type)
    descriptors: list[dict[str, Any]] = []
    for record in records:
        descriptor: dict[str, Any] = {
            "mediaType": record.media_type,
            "digest": record.digest,
            "size": record.size,
        }
        if record.artifact_type:
            descriptor["artifactType"] = record.artifact_type
        if record.annotations:
            descriptor["annotations"] = record.annotations
        descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": descriptors}
    headers = dict(API_VERSION)
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    # Content-Type exactly the index media type: clients compare it without parameters, and
    # json_response(content_type=...) would append "; charset=utf-8".
    headers["Content-Type"] = mediatypes.OCI_INDEX
    return web.Response(body=json.dumps(index).encode(), headers=headers)
