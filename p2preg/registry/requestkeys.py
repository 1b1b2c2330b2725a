"""The typed ``request[...]`` keys through which handlers tell the access log and metrics what
they did.

Owns: ``SOURCE_KEY`` (blob handlers: ``"local"``, ``"upstream"`` or ``"peer"``), ``USER_KEY``
(the auth middleware: the authenticated user name), ``DIGEST_KEY`` (a digest not in the route),
``UPSTREAM_KEY`` (the mirror: upstream registry host), ``PEER_KEY`` (the P2P path: peer node id)
and ``request_value`` to read one. Each key's name is also accepted as a plain string key
(``request["p2preg_source"]``) for code that sets it that way.

Must not import other p2preg modules.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from aiohttp import web

SOURCE_KEY = web.RequestKey("p2preg_source", str)
USER_KEY = web.RequestKey("p2preg_user", str)
DIGEST_KEY = web.RequestKey("p2preg_digest", str)
UPSTREAM_KEY = web.RequestKey("p2preg_upstream", str)
PEER_KEY = web.RequestKey("p2preg_peer", str)

_PLAIN_NAMES: dict[web.RequestKey[str], str] = {
    SOURCE_KEY: "p2preg_source",
    USER_KEY: "p2preg_user",
    DIGEST_KEY: "p2preg_digest",
    UPSTREAM_KEY: "p2preg_upstream",
    PEER_KEY: "p2preg_peer",
}


def request_value(request: MutableMapping[Any, Any], key: web.RequestKey[str]) -> str | None:
    """The value stored under ``key`` (or under its plain-string name), as text."""
    value = request.get(key)
    if value is None:
        value = request.get(_PLAIN_NAMES.get(key, ""))
    return None if value is None else str(value)
