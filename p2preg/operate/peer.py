"""The peer routes that make a node pull an image: ``POST /p2p/v1/pulls`` and
``GET /p2p/v1/pulls/<id>`` (served where the rest of ``/p2p`` is).

Owns the two handlers (``pull_routes``) and the request body's validation. Every request must be
signed with the cluster keyring (``signing.verify_request``: ``401`` otherwise, ``503`` on a
node without a key). A start is idempotent by ``id`` (a retried request does not start a second
pull). Body of a start::

    {"id": "...", "image": "docker.io/library/busybox:latest",
     "repository": "library/busybox", "reference": "latest",
     "platforms": ["linux/amd64"], "at": 1765000000.0 | null, "evict_first": false}

Answer (both routes): ``pull.PullProgress`` as JSON (``202`` for a start). Unknown id: ``404``.
Bad body: ``400`` with OCI error JSON.

Must not import the coordinator or the operator routes.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from p2preg.oci.names import is_tag, validate_name
from p2preg.operate.pull import PullJobs, PullSpec
from p2preg.operate.signing import bad_request, platforms_and_at, signed_routes
from p2preg.p2p.auth import RequestVerifier

PULLS_PATH = "/p2p/v1/pulls"
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_start(body: Any) -> tuple[str, str, PullSpec]:
    """``(id, image, spec)`` from a start body, or raise a 400 ``RegistryError``."""
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    job_id, image = body.get("id"), body.get("image", "")
    repository, reference = body.get("repository"), body.get("reference")
    if not isinstance(job_id, str) or not _ID_RE.match(job_id):
        raise bad_request("id must be 1-64 of [A-Za-z0-9_.-]")
    if not isinstance(repository, str) or not isinstance(reference, str):
        raise bad_request("repository and reference are required strings")
    validate_name(repository)
    if not (is_tag(reference) or _DIGEST_RE.match(reference)):
        raise bad_request(f"reference {reference!r} is neither a tag nor a sha256 digest")
    platforms, at = platforms_and_at(body)
    spec = PullSpec(repository, reference, platforms, at, bool(body.get("evict_first")))
    return job_id, str(image)[:512], spec


def pull_routes(jobs: PullJobs, verifier: RequestVerifier | None) -> web.RouteTableDef:
    def start(body: Any) -> dict[str, Any]:
        job_id, image, spec = parse_start(body)
        jobs.start(job_id, image, spec)
        shown = jobs.show(job_id)
        assert shown is not None
        return shown

    return signed_routes(PULLS_PATH, verifier, start=start, show=jobs.show, what="pull")
