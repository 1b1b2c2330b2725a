"""The HTTP connection layer under the /v2 app: a header read deadline and client-fault logging.

Owns: ``RegistryRunner`` (an ``AppRunner`` whose connections are ``RegistryRequestHandler``s) and
the two things aiohttp's own connection handler does not do:

- **Header read deadline.** aiohttp bounds an idle keep-alive connection but not one that trickles
  a request's header bytes (slowloris): each byte restarts nothing and the connection is held for
  as long as the client likes. Here a deadline is armed when a connection opens and whenever bytes
  of a new request arrive between requests; it is cancelled when a request's headers are complete
  (the parser hands over a message). A connection still without a complete request head when the
  deadline fires is closed. Bodies are not bounded here (an upload may take hours).
- **Client faults are not server errors.** aiohttp answers an unparseable request (bad request
  line, malformed header, oversize line) with a text/plain 400 and logs it at ERROR with a
  traceback; a client that disconnects while its response is streaming is logged the same way.
  Here a malformed request is answered with the OCI error JSON and logged at INFO on one line;
  a vanished client is logged at DEBUG and recorded with status 499
  (``errors.client_closed_response``).

Relies on aiohttp's ``RequestHandler`` internals (``_request_count``, ``_messages``,
``_current_request``; checked against aiohttp 3.14; ``tests/registry/test_httpserver.py`` fails if
they change). Must not import storage, handlers, the mirror or the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.errors import client_closed_response, is_client_disconnect

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 20.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0
"""An idle keep-alive connection is closed after this long (nginx's default; aiohttp's is an hour).
It also bounds the one head the header deadline cannot see: a partial request pipelined behind a
complete one in the same packet."""


class RegistryRequestHandler(RequestHandler):
    """aiohttp's connection handler plus the header deadline and quiet client faults."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._requests_at_arm = 0

    # -- the header read deadline ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._cancel_header_deadline()  # a request head is complete
        elif data and self._between_requests():
            self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self._current_request is None and not self._messages

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None or self._header_timeout_s <= 0:
            return
        self._requests_at_arm = self._request_count
        self._header_deadline = self._loop.call_later(
            self._header_timeout_s, self._header_deadline_passed
        )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self._request_count != self._requests_at_arm or not self._between_requests():
            return
        if self.transport is None:
            return
        peer = self.transport.get_extra_info("peername")
        log.info(
            "closing connection from %s: no complete request head within %.1f s",
            peer[0] if isinstance(peer, tuple) else peer,
            self._header_timeout_s,
        )
        self.force_close()

    # -- client faults ---------------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if is_client_disconnect(request, exc):
            log.debug("client %s went away: %s", request.remote, exc)
            if request.writer.output_size > 0:
                raise ConnectionError("client went away while its response was being sent")
            return client_closed_response()
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        text = message or (str(exc) if exc is not None else "bad request")
        log.info("bad request from %s: %s", request.remote, text)
        error = RegistryError(ErrorCode.UNSUPPORTED, f"malformed request: {text}", status=status)
        response = web.Response(
            status=status,
            body=json.dumps(error.body()).encode(),
            content_type="application/json",
        )
        response.force_close()
        return response


class _RegistryServer(web.Server):
    """An aiohttp ``Server`` whose connections are ``RegistryRequestHandler``s."""

    def __init__(self, base: web.Server, header_timeout_s: float) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return RegistryRequestHandler(
            self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs
        )


class RegistryRunner(web.AppRunner):
    """``web.AppRunner`` serving ``app`` through ``RegistryRequestHandler`` connections.

    ``header_timeout_s`` bounds the time from a connection's first byte (or the first byte of a
    request after the previous one) to a complete request head; 0 disables it.
    ``keepalive_timeout`` closes idle keep-alive connections (``DEFAULT_KEEPALIVE_TIMEOUT_S``).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        return _RegistryServer(await super()._make_server(), self._header_timeout_s)
