"""The registry auth challenge flow: ``WWW-Authenticate`` parsing, Bearer tokens, Basic auth.

Owns: ``parse_challenges`` (RFC 7235 header grammar, quoted strings included),
``parse_token_response`` (the Docker or OAuth2 token JSON, read once, into a ``TokenResponse``),
``TokenCache`` (tokens per (realm, service, scope) until they expire, read through an injected
``now``) and ``Authenticator`` (fetches tokens with one request per scope at a time, remembers
each upstream's challenge so later requests carry a token from the start).

Tokens are asked for as the Docker token spec says: ``GET realm?service=&scope=`` with Basic
credentials (or none), or, when the credentials are an identity token (an OAuth2 refresh token),
``POST realm`` with ``grant_type=refresh_token`` (docs.docker.com registry ``oauth``); a token
server that answers that ``POST`` with 404 or 405 does not speak OAuth2 and is asked with ``GET``
and the identity token as the Basic password, as docker falls back. A refresh token the server
rotates (a new ``refresh_token`` in its answer) replaces the old one for later requests.
Must not import storage, registry, gossip or fetch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp

from p2preg.clock import Clock
from p2preg.upstream.config import Credentials
from p2preg.upstream.errors import UpstreamDenied, UpstreamProtocolError, UpstreamUnavailable

#: Tokens are dropped this long (or 10% of their life, whichever is less) before they expire, so a
#: request never leaves with a token that dies on the way.
EXPIRY_MARGIN_S = 5.0
#: The Docker token spec: a token without ``expires_in`` lives 60 s.
DEFAULT_TOKEN_LIFETIME_S = 60.0
MAX_TOKEN_RESPONSE_BYTES = 1 << 20
#: ``client_id`` of the OAuth2 refresh-token flow (the spec asks clients to name themselves).
OAUTH_CLIENT_ID = "p2preg"

_SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lowercase scheme and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges; malformed parts are skipped."""
    challenges: list[Challenge] = []
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in " ,\t":
            pos += 1
        m = _SCHEME.match(header, pos)
        if m is None:
            break
        scheme = m.group(0).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < n:
            pm = _PARAM.match(header, pos)
            # A new challenge starts with "scheme " not followed by "=".
            if pm is None:
                break
            key, raw = pm.group(1).lower(), pm.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params[key] = raw
            pos = pm.end()
            if pos < n and header[pos] == ",":
                pos += 1
        challenges.append(Challenge(scheme, params))
    return challenges


class TokenResponse(NamedTuple):
    """What a token endpoint answered: the token, its expiry, a rotated OAuth2 refresh token."""

    token: str
    expires_at: float  # in the clock of the ``now`` it was parsed with
    refresh_token: str | None


def parse_token_response(body: bytes, now: float) -> TokenResponse:
    """A token endpoint's JSON (Docker's ``token`` or OAuth2's ``access_token``), parsed once."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"token response is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("token response is not a JSON object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token response has no token")
    lifetime = data.get("expires_in", DEFAULT_TOKEN_LIFETIME_S)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME_S
    margin = min(EXPIRY_MARGIN_S, float(lifetime) * 0.1)
    refresh = data.get("refresh_token")
    return TokenResponse(token, now + float(lifetime) - margin,
                         refresh if isinstance(refresh, str) and refresh else None)


def _oauth_error(body: bytes) -> str:
    """``error`` (and ``error_description``) of an OAuth2 error answer, for the message."""
    try:
        data = json.loads(body)
    except ValueError:
        return "no OAuth2 error body"
    if not isinstance(data, dict):
        return "no OAuth2 error body"
    parts = [str(data[k])[:200] for k in ("error", "error_description") if k in data]
    return ": ".join(parts) or "no OAuth2 error body"


TokenKey = tuple[str, str, str]  # (realm, service, scope)


class TokenCache:
    """Bearer tokens by (realm, service, scope), valid until their expiry in the injected clock."""

    def __init__(self) -> None:
        self._tokens: dict[TokenKey, tuple[str, float]] = {}

    def get(self, key: TokenKey, now: float) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if now >= expires_at:
            del self._tokens[key]
            return None
        return token

    def put(self, key: TokenKey, token: str, expires_at: float) -> None:
        self._tokens[key] = (token, expires_at)

    def drop(self, key: TokenKey, token: str | None = None) -> None:
        """Forget ``key`` (only if it still holds ``token`` when one is given)."""
        entry = self._tokens.get(key)
        if entry is not None and (token is None or entry[0] == token):
            del self._tokens[key]

    def __len__(self) -> int:
        return len(self._tokens)


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


TokenObserver = Callable[[int | str], None]  # the token endpoint's status, or "error"


class Authenticator:
    """Authorization headers for one upstream.

    ``header_for(scope)`` gives the header to send up front (None before the upstream has ever
    challenged us). ``answer(challenge_header, scope, rejected)`` is called on a 401: it remembers
    the challenge, drops the rejected token and gets a new one.
    """

    def __init__(
        self,
        registry: str,
        session_factory: Callable[[], aiohttp.ClientSession],
        clock: Clock,
        credentials: Credentials | None = None,
        *,
        on_token_request: TokenObserver | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self._registry = registry
        self._deadline_s = deadline_s  # a token exchange (headers and body) ends within this
        self._session = session_factory
        self._clock = clock
        self._credentials = credentials
        self._refresh_token = credentials.identity_token if credentials is not None else None
        self._oauth = self._refresh_token is not None  # cleared when the server lacks OAuth2
        self._cache = TokenCache()
        self._bearer: Challenge | None = None
        self._basic = False
        self._inflight: dict[TokenKey, asyncio.Future[str]] = {}
        self._observe = on_token_request or (lambda status: None)
        self.token_requests = 0

    @property
    def cache(self) -> TokenCache:
        return self._cache

    async def header_for(self, scope: str) -> str | None:
        if self._bearer is not None:
            return "Bearer " + await self._token(self._bearer, scope)
        if self._basic and self._credentials is not None:
            return basic_header(self._credentials)
        return None

    async def answer(self, header: str | None, scope: str, rejected: str | None) -> str:
        """Handle a 401: return the header to retry with, or raise ``UpstreamDenied``."""
        challenges = parse_challenges(header or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and "realm" in c.params), None)
        if bearer is not None:
            self._bearer = bearer
            key = self._key(bearer, scope)
            if rejected is not None and rejected.startswith("Bearer "):
                self._cache.drop(key, rejected.removeprefix("Bearer "))
            asked = bearer.params.get("scope") or scope
            return "Bearer " + await self._token(bearer, scope, asked)
        if any(c.scheme == "basic" for c in challenges):
            if self._credentials is None:
                raise UpstreamDenied(self._registry, "asks for a login and no credentials are "
                                     "configured for it", status=401)
            if self._basic and rejected is not None:
                raise UpstreamDenied(self._registry, "rejected the configured credentials",
                                     status=401)
            self._basic = True
            return basic_header(self._credentials)
        raise UpstreamDenied(self._registry, f"answered 401 with no usable challenge "
                             f"({header or 'no WWW-Authenticate'})", status=401)

    def _key(self, challenge: Challenge, scope: str) -> TokenKey:
        return (challenge.params["realm"], challenge.params.get("service", ""), scope)

    async def _token(self, challenge: Challenge, scope: str, asked: str | None = None) -> str:
        """A token cached under ``scope``; requested for ``asked`` (the challenge's own scope)."""
        key = self._key(challenge, scope)
        cached = self._cache.get(key, self._clock.now())
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            answer = await self._fetch(challenge, asked or scope)
            token = answer.token
            self._cache.put(key, token, answer.expires_at)
            fut.set_result(token)
            return token
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: joiners may be gone
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, challenge: Challenge, scope: str) -> TokenResponse:
        params = {"scope": scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        realm = challenge.params["realm"]
        if not realm.startswith(("https://", "http://")):
            raise UpstreamProtocolError(self._registry, f"token realm {realm!r} is not a URL")
        if self._oauth and self._refresh_token is not None:
            form = {**params, "grant_type": "refresh_token", "refresh_token": self._refresh_token,
                    "client_id": OAUTH_CLIENT_ID}  # fmt: skip
            status, body = await self._ask(realm, "POST", data=form)
            if status == 400:  # RFC 6749: invalid_grant (expired or revoked refresh token)
                raise UpstreamDenied(self._registry, f"token server refused the identity token "
                                     f"({_oauth_error(body)})", status=401)
            if status not in (404, 405):
                return self._accept(status, body)
            self._oauth = False  # no OAuth2 here: GET with the token as password from now on
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = basic_header(self._credentials)
        return self._accept(*await self._ask(realm, "GET", params=params, headers=headers))

    async def _ask(self, realm: str, method: str, **kwargs: Any) -> tuple[int, bytes]:
        self.token_requests += 1
        try:
            async with asyncio.timeout(self._deadline_s), self._session().request(
                method, realm, allow_redirects=False, **kwargs
            ) as resp:
                self._observe(resp.status)
                return resp.status, await resp.content.read(MAX_TOKEN_RESPONSE_BYTES)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._observe("error")
            raise UpstreamUnavailable(
                self._registry, f"token server {realm} unreachable: {exc or type(exc).__name__}"
            ) from exc

    def _accept(self, status: int, body: bytes) -> TokenResponse:
        if status in (401, 403):
            raise UpstreamDenied(self._registry, f"token server refused the credentials "
                                 f"({status})", status=status)
        if status != 200:
            raise UpstreamUnavailable(self._registry, f"token server answered {status}",
                                      status=status)
        try:
            answer = parse_token_response(body, self._clock.now())
        except ValueError as exc:
            raise UpstreamProtocolError(self._registry, str(exc)) from exc
        if answer.refresh_token is not None and self._oauth:
            self._refresh_token = answer.refresh_token
        return answer

