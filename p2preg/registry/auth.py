"""Registry login: HTTP Basic against an htpasswd file, as ``docker login``/``podman login`` expect.

Owns: ``AuthPolicy`` (who may do what: a pure decision table), ``parse_basic_authorization``
and ``auth_middleware(policy)``. The decision for a request, given whether it carried valid
credentials:

==========================  ===========================  ==========================================
request                     policy                       answer
==========================  ===========================  ==========================================
``/metrics``, ``/healthz``, any                          passes (not registry auth; ``/p2p/`` has
``/p2p/...``                                             its own cluster-key auth)
valid credentials           htpasswd set                 passes; ``request["p2preg_user"] = user``
wrong credentials           htpasswd set                 401 ``UNAUTHORIZED`` (never falls back to
                                                         anonymous, so a wrong ``login`` fails)
malformed ``Authorization``  htpasswd set                401 ``UNAUTHORIZED``
none (or empty ``:``)       htpasswd, no anonymous read  401 ``UNAUTHORIZED`` + challenge
none, ``GET/HEAD /v2/``     htpasswd, anonymous read     401 ``UNAUTHORIZED`` + challenge (below)
none, other ``GET/HEAD``    htpasswd, anonymous read     passes anonymously
none, a write               htpasswd, anonymous read     401 ``UNAUTHORIZED`` + challenge
a write (any credentials)   no htpasswd, anonymous read  403 ``DENIED``: a read-only registry; no
                                                         credentials could help, so no challenge
a read                      no htpasswd, anonymous read  passes anonymously
==========================  ===========================  ==========================================

Writes are every method except GET and HEAD. Every 401 carries ``WWW-Authenticate: Basic
realm="<realm>"``; every answer of this middleware carries ``Docker-Distribution-API-Version:
registry/2.0`` and the OCI error JSON body (none for HEAD).

Why ``/v2/`` still challenges under anonymous read: docker and podman only ever send credentials
to a registry whose ``/v2/`` ping answered 401 with a Basic challenge; a 200 ping makes ``login``
accept any password and makes every later push fail. podman, skopeo and containerd read
anonymously after that challenge (they send empty Basic credentials, or skip the ping);
docker's client refuses to continue after a Basic challenge without credentials, so anonymous
*docker* pulls need a login (the same holds for CNCF Distribution with htpasswd).

Must not import storage, handlers, the mirror or the node.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.htpasswd import Htpasswd
from p2preg.registry.requestkeys import USER_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READ_METHODS = frozenset({"GET", "HEAD"})
#: Entries ending in "/" are prefixes, the others exact paths.
DEFAULT_EXEMPT_PATHS = ("/metrics", "/healthz", "/p2p/")
_PING_PATHS = frozenset({"/v2", "/v2/"})
_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


class Decision(enum.Enum):
    ALLOW = "allow"
    CHALLENGE = "challenge"  # 401 UNAUTHORIZED with WWW-Authenticate
    DENY = "deny"  # 403 DENIED


class MalformedAuthorization(ValueError):
    """The ``Authorization`` header is not usable Basic credentials."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str


def parse_basic_authorization(header: str | None) -> Credentials | None:
    """Basic credentials from an ``Authorization`` header; None when absent or empty (``:``)."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise MalformedAuthorization("only Basic authorization is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise MalformedAuthorization("Basic credentials are not valid base64 UTF-8") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise MalformedAuthorization("Basic credentials lack the ':' separator")
    if not user and not password:
        return None
    return Credentials(user, password)


def _valid_realm(realm: str) -> bool:
    return bool(realm) and all(0x20 <= ord(c) < 0x7F and c not in '"\\' for c in realm)


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """Who may do what; ``decide`` is the table in the module docstring."""

    htpasswd: Htpasswd | None
    anonymous_read: bool = False
    realm: str = "p2preg"
    exempt_paths: tuple[str, ...] = DEFAULT_EXEMPT_PATHS

    def __post_init__(self) -> None:
        if not _valid_realm(self.realm):
            raise ValueError(f"realm must be printable ASCII without quotes: {self.realm!r}")
        if self.htpasswd is None and not self.anonymous_read:
            raise ValueError(
                "an auth policy without an htpasswd file must allow anonymous reads "
                "(otherwise nothing could ever be read); to run an open registry, leave the "
                "auth middleware out"
            )

    @property
    def challenge(self) -> str:
        return f'Basic realm="{self.realm}"'

    def is_exempt(self, path: str) -> bool:
        """True for the paths outside registry auth; never for a ``/v2`` path."""
        if path in _PING_PATHS or path.startswith("/v2/"):
            return False
        for exempt in self.exempt_paths:
            if exempt.endswith("/"):
                if path.startswith(exempt) or path == exempt.rstrip("/"):
                    return True
            elif path == exempt:
                return True
        return False

    def decide(self, method: str, path: str, *, authenticated: bool) -> Decision:
        """The answer for a request that carried valid credentials (or none)."""
        if self.is_exempt(path):
            return Decision.ALLOW
        is_read = method.upper() in READ_METHODS
        if self.htpasswd is None:  # read-only registry
            return Decision.ALLOW if is_read else Decision.DENY
        if authenticated:
            return Decision.ALLOW
        if self.anonymous_read and is_read and path not in _PING_PATHS:
            return Decision.ALLOW
        return Decision.CHALLENGE


def _error_response(
    request: web.Request, policy: AuthPolicy, decision: Decision, message: str
) -> web.Response:
    headers = dict(_API_VERSION)
    if decision is Decision.CHALLENGE:
        error = RegistryError(ErrorCode.UNAUTHORIZED, message)
        headers["WWW-Authenticate"] = policy.challenge
    else:
        error = RegistryError(ErrorCode.DENIED, message)
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers)
    return web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=headers,
    )


def _exempt(policy: AuthPolicy, request: web.Request) -> bool:
    """Exempt by path, and never when the route that will answer is a ``/v2`` route."""
    if not policy.is_exempt(request.path):
        return False
    resource = request.match_info.route.resource
    return resource is None or not resource.canonical.startswith("/v2")


def auth_middleware(policy: AuthPolicy) -> Middleware:
    """The aiohttp middleware enforcing ``policy`` (place it after the observability one)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if _exempt(policy, request):
            return await handler(request)
        authenticated = False
        if policy.htpasswd is not None:
            try:
                credentials = parse_basic_authorization(request.headers.get("Authorization"))
            except MalformedAuthorization as exc:
                return _error_response(request, policy, Decision.CHALLENGE, str(exc))
            if credentials is not None:
                if not await policy.htpasswd.verify(credentials.user, credentials.password):
                    return _error_response(
                        request, policy, Decision.CHALLENGE, "invalid username or password"
                    )
                request[USER_KEY] = credentials.user
                authenticated = True
        decision = policy.decide(request.method, path, authenticated=authenticated)
        if decision is Decision.ALLOW:
            return await handler(request)
        if decision is Decision.DENY:
            return _error_response(request, policy, decision, "this registry is read-only")
        return _error_response(request, policy, decision, "authentication required")

    return middleware
