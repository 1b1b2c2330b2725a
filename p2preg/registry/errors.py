"""The error middleware: every failure under the registry app becomes OCI error JSON.

Owns: ``error_middleware`` and ``error_response``. ``RegistryError`` keeps its code, status and
headers; aiohttp's own HTTP errors (unknown route 404, 405, 413 body too large) are mapped to an
OCI code; a client that went away mid-request (its body stopped, its socket closed) is answered
``499`` (nginx's "client closed request": nobody reads it, but the access log and the metrics
record it as the client's doing, not as a server error) and logged at DEBUG; any other exception
is logged with its traceback and answered 500 ``UNKNOWN`` without leaking internals. HEAD
responses carry no body. When a handler fails after its response started streaming, nothing can
be sent any more: the exception propagates and aiohttp drops the connection, so a client never
sees a completed response with wrong bytes (``httpserver`` keeps a client's own disconnect there
off the ERROR log).
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

CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client went away before the answer: a client fault."""

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


def client_gone(request: web.BaseRequest) -> bool:
    """True when the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


def is_client_disconnect(request: web.BaseRequest, exc: BaseException | None) -> bool:
    """True when ``exc`` is the client going away.

    A reset or broken pipe (what writing to a socket whose peer left raises, e.g. from
    ``sendfile``), or any connection or body error once the client's socket is closed. Other
    ``ConnectionError``s while the client is still connected (refused, aborted locally) came from
    somewhere else and are the server's own failure.
    """
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return True
    return isinstance(exc, (ConnectionError, web.RequestPayloadError)) and client_gone(request)


def client_closed_response() -> web.Response:
    """The 499 recorded for a request whose client is gone (it is never delivered)."""
    response = web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
    response.force_close()
    return response


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
    except asyncio.CancelledError:
        raise
    except (ConnectionError, web.RequestPayloadError) as exc:
        if _response_started(request):
            raise
        if is_client_disconnect(request, exc):
            log.debug("client went away during %s %s: %s", request.method, request.path, exc)
            return client_closed_response()
        if isinstance(exc, web.RequestPayloadError):
            return error_response(
                request, RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, f"malformed body: {exc}")
            )
        return _internal_error(request)
    except Exception:
        if _response_started(request):
            log.exception("unhandled error in %s %s", request.method, request.path)
            raise
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """Log the exception being handled with its traceback; answer 500 ``UNKNOWN``."""
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(
        request, RegistryError(ErrorCode.UNKNOWN, "internal server error", status=500)
    )
