"""Signed JSON requests between operators and nodes: the one place both sides of this package's
routes check and add cluster-key signatures.

Owns: ``verify_request`` (a handler's check: ``401`` OCI error JSON when the request is not signed
with the cluster keyring; ``503`` when the node has no key, so nobody can start pulls on it
anonymously), ``signed_json`` (the client side: one signed request, its JSON answer) and
``SignedClientError``.

Must not import the registry handlers, the mirror or gossip services.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.p2p.auth import NODE_HEADER, AuthFailure, RequestSigner, RequestVerifier

VERIFIED_KEY = web.RequestKey("p2preg_operate_verified", str)


class SignedClientError(Exception):
    """A signed request that did not get a usable answer: ``status`` 0 when none arrived."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def verify_request(request: web.Request, verifier: RequestVerifier | None) -> str:
    """The signed sender's name (may be empty), or raise ``RegistryError`` (401/503)."""
    if verifier is None:
        raise RegistryError(ErrorCode.UNAVAILABLE, "this node has no cluster key: cluster "
                            "pulls need one (--cluster-key-file)", status=503)
    try:
        return verifier.verify(request.method, request.raw_path, request.headers).node
    except AuthFailure as exc:
        raise RegistryError(ErrorCode.UNAUTHORIZED, exc.message, {"reason": exc.reason},
                            status=401) from None


def error_response(error: RegistryError) -> web.Response:
    return web.Response(status=error.status, body=error.body_bytes(),
                        content_type="application/json", headers=error.headers)


async def signed_json(session: aiohttp.ClientSession, signer: RequestSigner, method: str,
                      base_url: str, path: str, *, sender: str, body: Any = None,
                      timeout_s: float = 10.0) -> Any:
    """Send one signed request; return the JSON answer of a 2xx, else raise
    ``SignedClientError`` with the status and the OCI error's message."""
    headers = {NODE_HEADER: sender}
    headers.update(signer.sign(method, path, headers))
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(method, base_url.rstrip("/") + path, data=data,
                                   headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            text = await resp.text()
            if resp.status // 100 != 2:
                raise SignedClientError(resp.status, _error_message(resp.status, text))
            return json.loads(text)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise SignedClientError(0, f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    except ValueError as exc:
        raise SignedClientError(0, f"not JSON: {exc}") from None


def _error_message(status: int, text: str) -> str:
    try:
        errors = json.loads(text)["errors"]
        return f"{status} " + "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return f"{status} {text[:200]}"
