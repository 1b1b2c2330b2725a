"""The operator routes on the ``/v2`` listener that ``p2preg preheat`` and ``p2preg fanout``
call: ``POST /_p2preg/v1/cluster-pulls`` and ``GET /_p2preg/v1/cluster-pulls/<id>``.

Owns the two handlers (``operator_routes``) and the start body's validation. Both must be signed
with the cluster keyring (``signing.verify_request``: ``401`` without a valid signature, ``503``
on a node without a key); the signature is their authentication, so ``--htpasswd`` does not
apply to them (``EXEMPT_PREFIX``). Body of a start::

    {"image": "busybox:latest", "nodes": ["n1", "n2"] | null, "platforms": ["linux/amd64"],
     "at": 1765000000.0 | null, "evict_first": false}

``image`` is written as users write it (``reference.parse_image``). Answer: the
``coordinator.ClusterPull`` as JSON (``202`` for a start); ``400`` for a bad body or unknown node
names (the message names the members), ``404`` for an unknown id.

Must not import the peer routes' handlers or the registry handlers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.operate.coordinator import Coordinator, UnknownNodes
from p2preg.operate.peer import PLATFORM_RE
from p2preg.operate.reference import ImageRefError, parse_image
from p2preg.operate.signing import error_response, verify_request
from p2preg.p2p.auth import RequestVerifier

CLUSTER_PULLS_PATH = "/_p2preg/v1/cluster-pulls"
EXEMPT_PREFIX = CLUSTER_PULLS_PATH + "/"
_MAX_NODES = 10_000


def _bad(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def _start(coordinator: Coordinator, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    try:
        image = parse_image(str(body.get("image", "")))
    except ImageRefError as exc:
        raise _bad(str(exc)) from None
    nodes, platforms, at = body.get("nodes"), body.get("platforms") or [], body.get("at")
    if nodes is not None and (not isinstance(nodes, list) or len(nodes) > _MAX_NODES
                              or not all(isinstance(n, str) and n for n in nodes)):
        raise _bad("nodes must be a list of member names or null (all)")
    if not isinstance(platforms, list) or not all(
            isinstance(p, str) and PLATFORM_RE.match(p) for p in platforms):
        raise _bad("platforms must be a list of os/arch[/variant]")
    if at is not None and not isinstance(at, int | float):
        raise _bad("at must be a Unix time or null")
    try:
        pull = coordinator.start(image, nodes=nodes, platforms=tuple(platforms),
                                 at=None if at is None else float(at),
                                 evict_first=bool(body.get("evict_first")))
    except UnknownNodes as exc:
        raise _bad(str(exc)) from None
    return pull.to_json()


def _coordinator(coordinator: Coordinator | None) -> Coordinator:
    if coordinator is None:
        raise RegistryError(ErrorCode.UNAVAILABLE, "this node runs without gossip: it knows no "
                            "cluster to pull on (--gossip-listen)", status=503)
    return coordinator


def operator_routes(coordinator: Coordinator | None, verifier: RequestVerifier | None
                    ) -> web.RouteTableDef:
    """The routes; without a coordinator (no gossip) they answer ``503`` naming why."""
    routes = web.RouteTableDef()

    @routes.post(CLUSTER_PULLS_PATH)
    async def start(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            try:
                body = await request.json()
            except ValueError:
                raise _bad("body is not JSON") from None
            return web.json_response(_start(_coordinator(coordinator), body), status=202)
        except RegistryError as exc:
            return error_response(exc)

    @routes.get(CLUSTER_PULLS_PATH + "/{id}")
    async def show(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            pull = _coordinator(coordinator).pulls.get(request.match_info["id"])
            if pull is None:
                raise RegistryError(ErrorCode.UNSUPPORTED, "no such cluster pull", status=404)
        except RegistryError as exc:
            return error_response(exc)
        return web.json_response(pull.to_json())

    return routes
