"""Listeners by audience: the local ``/v2`` API and the peer API, and what each may serve.

Owns: ``is_loopback_host``, ``open_mirror_problem`` (the start-up check that keeps a mirror with
upstream credentials from serving ``/v2`` to the network without logins), and
``peer_auth_middleware`` (with a cluster key, every request on the peer listener is signed).

The layout (docs/p2p.md, "Listeners"):

- ``--listen`` (default ``127.0.0.1:5000``): ``/v2``, ``/metrics``, ``/healthz`` for the clients
  of this host. With ``--peer-listen`` set, the peer API is not served here, except the members
  list while ``--listen`` is loopback (``p2preg members`` on the host).
- ``--peer-listen``: ``/p2p/...`` only (blobs, tags, members, pulls); gossip advertises its address
  (or ``--advertise``) as the one peers fetch from. With a cluster key every request must be
  signed, the members list included; anything else is ``401``.
- ``--metrics-listen`` (unset): ``GET /metrics`` only, unauthenticated, for a Prometheus that
  cannot reach the loopback ``--listen`` (the node's IP in a DaemonSet); never a wildcard
  (``config.validate``). ``/metrics`` stays on ``--listen`` too.
- Without ``--peer-listen`` both share ``--listen`` (the layout before listeners were split;
  it still works, and a node warns when that listener is not loopback).

Must not import the registry handlers, the mirror, gossip or the p2p server: routes and the
verifier come in as arguments.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.p2p.auth import AuthFailure, RequestVerifier

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_OPEN_MIRROR_FLAG = "--allow-open-mirror"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``; a wildcard or any other name is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_mirror_problem(
    *, listen_host: str, has_upstream_credentials: bool, htpasswd: bool, allowed: bool
) -> str | None:
    """Why the node must not start, as one line, or None.

    A mirror that holds upstream credentials and serves ``/v2`` on a non-loopback address
    without logins lets anyone who reaches that address pull with those credentials (private
    repositories included) and list what is cached.
    """
    if not has_upstream_credentials or htpasswd or allowed or is_loopback_host(listen_host):
        return None
    return (f"--listen {listen_host} is not a loopback address and this mirror has upstream "
            "credentials: anyone who reaches it would pull with them"
            f"{OPEN_MIRROR_FIX_SEPARATOR}listen on 127.0.0.1 "
            "(peers use --peer-listen), require logins with --htpasswd, or pass "
            f"{ALLOW_OPEN_MIRROR_FLAG} to serve it to the network anyway")


#: Between what is wrong and the fix in ``open_mirror_problem``'s line.
OPEN_MIRROR_FIX_SEPARATOR = " — "


def _refuse(failure: AuthFailure) -> web.Response:
    error = RegistryError(ErrorCode.UNAUTHORIZED, failure.message, {"reason": failure.reason},
                          status=503 if failure.reason == "overloaded" else 401)
    return web.Response(status=error.status, body=error.body_bytes(),
                        content_type="application/json", headers=error.headers)


def peer_auth_middleware(
    verifier: RequestVerifier, *, self_verified: Sequence[str] = ()
) -> Middleware:
    """Refuse (401, OCI error JSON) every request on the peer listener whose cluster-key
    signature does not verify, unknown paths included. Paths under ``self_verified`` are passed
    on unchecked: their handlers verify the signature themselves (and a nonce may be seen once)."""

    @web.middleware
    async def peer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(tuple(self_verified)):
            try:
                verifier.verify(request.method, request.raw_path, request.headers)
            except AuthFailure as exc:
                log.info("refused peer-listener request %s %s from %s: %s", request.method,
                         request.path, request.remote, exc.message)
                return _refuse(exc)
        return await handler(request)

    return peer_auth


__all__ = [
    "ALLOW_OPEN_MIRROR_FLAG",
    "is_loopback_host",
    "open_mirror_problem",
    "peer_auth_middleware",
]
