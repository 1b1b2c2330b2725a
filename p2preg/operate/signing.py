"""Signed JSON requests between operators and nodes: the one place both sides of this package's
routes check and add cluster-key signatures.

Owns: ``verify_request`` (a handler's check: ``401`` OCI error JSON when the request is not signed
with the cluster keyring; ``503`` when the node has no key, so nobody can start pulls on it
anonymously), ``signed_routes`` (a signed ``POST PATH`` that starts something and a signed
``GET PATH/<id>`` that shows it, both answering JSON or OCI error JSON), ``bad_request`` and
``platforms_and_at`` (the body fields both start routes share), ``signed_headers`` and
``signed_json`` (the client side: the headers that sign a request; one signed request, its JSON
answer) and ``SignedClientError``.

Must not import the registry handlers, the mirror or gossip services.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.p2p.auth import NODE_HEADER, AuthFailure, RequestSigner, RequestVerifier

PLATFORM_RE = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(/[a-z0-9_.-]+)?$")


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


def bad_request(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def platforms_and_at(body: dict[str, Any]) -> tuple[tuple[str, ...], float | None]:
    """``platforms`` (a list of ``os/arch[/variant]``) and ``at`` (a Unix time or null)."""
    platforms, at = body.get("platforms") or [], body.get("at")
    if not isinstance(platforms, list) or not all(
            isinstance(p, str) and PLATFORM_RE.match(p) for p in platforms):
        raise bad_request("platforms must be a list of os/arch[/variant]")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
        raise bad_request("at must be a Unix time or null")
    return tuple(platforms), None if at is None else float(at)


def signed_routes(path: str, verifier: RequestVerifier | None, *,
                  start: Callable[[Any], dict[str, Any]],
                  show: Callable[[str], dict[str, Any] | None], what: str) -> web.RouteTableDef:
    """``POST path`` (body JSON -> ``start`` -> ``202``) and ``GET path/<id>`` (``show``; None
    is ``404``), both signed; ``start``/``show`` raise ``RegistryError`` to refuse."""
    routes = web.RouteTableDef()

    @routes.post(path)
    async def post(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            try:
                body = await request.json()
            except ValueError:
                raise bad_request("body is not JSON") from None
            return web.json_response(start(body), status=202)
        except RegistryError as exc:
            return error_response(exc)

    @routes.get(path + "/{id}")
    async def get(request: web.Request) -> web.Response:
        try:
            verify_request(request, verifier)
            shown = show(request.match_info["id"])
            if shown is None:
                raise RegistryError(ErrorCode.UNSUPPORTED, f"no such {what}", status=404)
        except RegistryError as exc:
            return error_response(exc)
        return web.json_response(shown)

    return routes


def signed_headers(signer: RequestSigner, method: str, path: str, *,
                   sender: str) -> dict[str, str]:
    """The headers that sign ``method path`` (query included) as ``sender``."""
    headers = {NODE_HEADER: sender}
    headers.update(signer.sign(method, path, headers))
    return headers


async def signed_json(session: aiohttp.ClientSession, signer: RequestSigner, method: str,
                      base_url: str, path: str, *, sender: str, body: Any = None,
                      timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one signed request; return the JSON object a 2xx answered, else raise
    ``SignedClientError`` with the status and the OCI error's message (status 0: no answer,
    or an answer that is not a JSON object)."""
    headers = signed_headers(signer, method, path, sender=sender)
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
            answer = json.loads(text)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise SignedClientError(0, f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    except ValueError as exc:
        raise SignedClientError(0, f"not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise SignedClientError(0, f"not a JSON object: {type(answer).__name__}")
    return answer


def _error_message(status: int, text: str) -> str:
    try:
        errors = json.loads(text)["errors"]
        return f"{status} " + "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return f"{status} {text[:200]}"
