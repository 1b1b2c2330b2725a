"""The error middleware: every failure under the registry app becomes OCI error JSON.

Owns: ``error_middleware`` and ``error_response``. ``RegistryError`` keeps its code, status and
headers; aiohttp's own HTTP errors (unknown route 404, 405, 413 body too large) are mapped to an
OCI code; any other exception is logged with its traceback and answered 500 ``UNKNOWN`` without
leaking internals. HEAD responses carry no body. When a handler fails after its response started
streaming, nothing can be sent any more: the exception propagates and aiohttp drops the connection,
so a client never sees a completed response with wrong bytes.
Must not import storage or handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from p2preg.oci.errors import ErrorCode, RegistryError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(request: web.Request, error: RegistryError) -> web.Response:
    """The OCI error response for ``error`` (no body for HEAD)."""
    headers = dict(_API_VERSION_HEADER)
    headers.update(error.headers)
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers)
    return web.Response(
        status=error.status,
        body=json.dumps(error.body()).encode(),
        content_type="application/json",
        headers=headers,
    )


def from_http_exception(exc: web.HTTPException) -> RegistryError:
    """Map an aiohttp HTTP error (raised by routing or body limits) to an OCI error."""
    headers = {}
    if exc.status == 405:
        allow = exc.headers.get("Allow")
        if allow:
            headers["Allow"] = allow
        return RegistryError(
            ErrorCode.UNSUPPORTED, "method not allowed on this endpoint", headers=headers
        )
    if exc.status == 404:
        return RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint", status=404)
    if exc.status == 413:
        return RegistryError(ErrorCode.SIZE_INVALID, "request body too large", status=413)
    if exc.status >= 500:
        return RegistryError(ErrorCode.UNKNOWN, exc.reason, status=exc.status)
    return RegistryError(ErrorCode.UNSUPPORTED, exc.reason, status=exc.status)


def _response_started(request: web.Request) -> bool:
    writer = request.writer
    return bool(getattr(writer, "output_size", 0)) or bool(getattr(writer, "buffer_size", 0))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of ``handler`` into OCI error JSON (see the module docstring)."""
    try:
        return await handler(request)
    except RegistryError as exc:
        if _response_started(request):
            raise
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if _response_started(request):
            raise
        return error_response(request, from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        if _response_started(request):
            raise
        return error_response(
            request, RegistryError(ErrorCode.UNKNOWN, "internal server error", status=500)
        )
