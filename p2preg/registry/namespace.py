"""``namespace_middleware``: the /v2 request's upstream namespace for the pull path.

Owns only the middleware: it records containerd's ``?ns=<registry>`` (and the request) in the
context variables of ``pull.mirror`` for the ``MirrorContentSource`` serving the request.
Must not import the p2p package, gossip or the node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from p2preg.pull.mirror import current_namespace, current_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def namespace_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record containerd's ``?ns=<registry>`` for the mirror ``ContentSource`` of this request."""
    token = current_namespace.set(request.query.get("ns") or None)
    request_token = current_request.set(request)
    try:
        return await handler(request)
    finally:
        current_request.reset(request_token)
        current_namespace.reset(token)
