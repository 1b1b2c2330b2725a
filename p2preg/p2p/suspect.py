"""Wrong-bytes reports between peers: "the bytes you sent me for this digest did not match it".

Owns: ``SUSPECT_ROUTE`` (``POST /p2p/v1/blobs/<digest>/suspect``), ``add_suspect_route`` (the
receiving side) and ``report_suspect`` (the sending side).

Rules:

1. The request is a peer request like a blob GET: it names its node in ``P2preg-Node`` and is
   signed when the cluster has a key (the caller's ``authenticate`` decides; an unsigned or badly
   signed report is refused before anything is hashed). It has no body.
2. The receiving node re-hashes its committed copy at once (``verify``:
   ``Scrubber.verify_now``) and answers ``200 {"digest": ..., "verdict": "ok"|"corrupt"|
   "absent"}`` only after the check: a ``corrupt`` copy is already quarantined and its ``drop``
   advertised, so nothing it serves from then on carries those bytes.
3. The sender treats a report as best effort: ``report_suspect`` never raises, and returns the
   verdict or None (unreachable, refused, timed out).

Must not import storage, fetch or registry.mirror.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import RegistryError
from p2preg.p2p.auth import NODE_HEADER, RequestSigner
from p2preg.p2p.source import BLOBS_PATH

log = logging.getLogger(__name__)

SUSPECT_ROUTE = BLOBS_PATH + "{digest}/suspect"
ROUTE_NAME = "p2p_blob_suspect"
VERDICTS = ("ok", "corrupt", "absent")
DEFAULT_REPORT_TIMEOUT_S = 30.0

Authenticate = Callable[[web.Request], str]
"""The requesting peer's node name; raises ``RegistryError`` for a request to refuse."""
Verify = Callable[[Digest], Awaitable[str]]


def add_suspect_route(table: web.RouteTableDef, authenticate: Authenticate,
                      verify: Verify) -> web.RouteTableDef:
    """Add the report endpoint to the peer routes ``table``; returns ``table``."""

    @table.post(SUSPECT_ROUTE, name=ROUTE_NAME)
    async def handle(request: web.Request) -> web.Response:
        try:
            peer = authenticate(request)
            digest = parse_digest(request.match_info["digest"])
        except RegistryError as exc:
            return web.Response(status=exc.status, body=exc.body_bytes(),
                                content_type="application/json", headers=dict(exc.headers))
        verdict = await verify(digest)
        level = logging.WARNING if verdict == "corrupt" else logging.INFO
        log.log(level, "peer %s reported wrong bytes for %s: our copy is %s", peer, digest,
                verdict, extra={"fields": {"event": "peer_suspect_report", "peer": peer,
                                           "digest": str(digest), "verdict": verdict}})
        return web.json_response({"digest": str(digest), "verdict": verdict})

    return table


async def report_suspect(
    session: aiohttp.ClientSession,
    base_url: str,
    digest: Digest,
    *,
    node_name: str,
    signer: RequestSigner | None = None,
    timeout_s: float = DEFAULT_REPORT_TIMEOUT_S,
) -> str | None:
    """Tell the peer at ``base_url`` (``scheme://host:port``) that its bytes for ``digest`` were
    wrong; its verdict, or None when the report did not get through. Never raises."""
    path = SUSPECT_ROUTE.format(digest=digest)
    headers = {NODE_HEADER: node_name}
    if signer is not None:
        headers.update(signer.sign("POST", path, headers))
    try:
        async with session.post(base_url + path, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                log.info("wrong-bytes report for %s to %s refused: %s", digest, base_url,
                         response.status)
                return None
            answer = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("wrong-bytes report for %s to %s failed: %s", digest, base_url, exc)
        return None
    verdict = answer.get("verdict") if isinstance(answer, dict) else None
    return verdict if verdict in VERDICTS else None
