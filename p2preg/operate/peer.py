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

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.names import is_tag, validate_name
from p2preg.operate.pull import PullJobs, PullSpec
from p2preg.operate.signing import error_response, verify_request
from p2preg.p2p.auth import RequestVerifier

PULLS_PATH = "/p2p/v1/pulls"
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PLATFORM_RE = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(/[a-z0-9_.-]+)?$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def _bad(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def parse_start(body: Any) -> tuple[str, str, PullSpec]:
    """``(id, image, spec)`` from a start body, or raise a 400 ``RegistryError``."""
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    job_id, image = body.get("id"), body.get("image", "")
    repository, reference = body.get("repository"), body.get("reference")
    platforms, at = body.get("platforms") or [], body.get("at")
    if not isinstance(job_id, str) or not _ID_RE.match(job_id):
        raise _bad("id must be 1-64 of [A-Za-z0-9_.-]")
    if not isinstance(repository, str) or not isinstance(reference, str):
        raise _bad("repository and reference are required strings")
    validate_name(repository)
    if not (is_tag(reference) or _DIGEST_RE.match(reference)):
        raise _bad(f"reference {reference!r} is neither a tag nor a sha256 digest")
    if not isinstance(platforms, list) or not all(
            isinstance(p, str) and PLATFORM_RE.match(p) for p in platforms):
        raise _bad("platforms must be a list of os/arch[/variant]")
    if at is not None and not isinstance(at, int | float):
        raise _bad("at must be a Unix time or null")
    spec = PullSpec(repository, reference, tuple(platforms),
                    None if at is None else float(at), bool(body.get("evict_first")))
    return job_id, str(image)[:512], spec


def pull_routes(jobs: PullJobs, verifier: RequestVerifier | None) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post(PULLS_PATH)
    async def start(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            try:
                body = await request.json()
            except ValueError:
                raise _bad("body is not JSON") from None
            job_id, image, spec = parse_start(body)
        except RegistryError as exc:
            return error_response(exc)
        return web.json_response(jobs.start(job_id, image, spec).to_json(), status=202)

    @routes.get(PULLS_PATH + "/{id}")
    async def show(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            progress = jobs.jobs.get(request.match_info["id"])
            if progress is None:
                raise RegistryError(ErrorCode.UNSUPPORTED, "no such pull", status=404)
        except RegistryError as exc:
            return error_response(exc)
        return web.json_response(progress.to_json())

    return routes
