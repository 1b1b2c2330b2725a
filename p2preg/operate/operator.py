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
from p2preg.operate.reference import ImageRefError, parse_image
from p2preg.operate.signing import bad_request, platforms_and_at, signed_routes
from p2preg.p2p.auth import RequestVerifier

CLUSTER_PULLS_PATH = "/_p2preg/v1/cluster-pulls"
EXEMPT_PREFIX = CLUSTER_PULLS_PATH + "/"
_MAX_NODES = 10_000


def _coordinator(coordinator: Coordinator | None) -> Coordinator:
    if coordinator is None:
        raise RegistryError(ErrorCode.UNAVAILABLE, "this node runs without gossip: it knows no "
                            "cluster to pull on (--gossip-listen)", status=503)
    return coordinator


def _start(coordinator: Coordinator, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    try:
        image = parse_image(str(body.get("image", "")))
    except ImageRefError as exc:
        raise bad_request(str(exc)) from None
    nodes = body.get("nodes")
    if nodes is not None and (not isinstance(nodes, list) or len(nodes) > _MAX_NODES
                              or not all(isinstance(n, str) and n for n in nodes)):
        raise bad_request("nodes must be a list of member names or null (all)")
    platforms, at = platforms_and_at(body)
    try:
        pull = coordinator.start(image, nodes=nodes, platforms=platforms, at=at,
                                 evict_first=bool(body.get("evict_first")))
    except UnknownNodes as exc:
        raise bad_request(str(exc)) from None
    return pull.to_json()


def operator_routes(coordinator: Coordinator | None, verifier: RequestVerifier | None
                    ) -> web.RouteTableDef:
    """The routes; without a coordinator (no gossip) they answer ``503`` naming why."""

    def show(pull_id: str) -> dict[str, Any] | None:
        pull = _coordinator(coordinator).pulls.get(pull_id)
        return None if pull is None else pull.to_json()

    return signed_routes(CLUSTER_PULLS_PATH, verifier, show=show, what="cluster pull",
                         start=lambda body: _start(_coordinator(coordinator), body))
