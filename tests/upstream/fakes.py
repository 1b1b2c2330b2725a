"""A faithful in-process fake of an upstream registry and its token server, for tests.

Owns: ``FakeUpstream`` (an aiohttp app on 127.0.0.1:0 that serves manifests and blobs like
Distribution, optionally behind the Bearer challenge flow of a token server it also runs, with
scripted failures, 429 + Retry-After, blob redirects to a second "storage" server on another port,
Range support and request records) and ``StepClock`` (a clock whose ``sleep`` records the delay
and moves time at once, so retry tests never wait). Test-only code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from p2preg.oci import mediatypes


class StepClock:
    """``now()`` is a number the test moves; ``sleep(s)`` records ``s`` and adds it to ``now``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int


@dataclass
class FakeUpstream:
    """A registry serving ``manifests`` (repo, ref) -> (media type, body) and ``blobs``."""

    clock: StepClock = field(default_factory=StepClock)
    token_auth: bool = False
    basic_auth: bool = False
    users: dict[str, str] = field(default_factory=dict)  # needed by the token server when set
    token_lifetime_s: float = 300.0
    redirect_blobs: bool = False
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    # Scripted answers: path suffix -> list of (status, headers) consumed one per request.
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    # While set to an unset event, manifest requests wait for it (a slow upstream).
    hold_manifests: asyncio.Event | None = None
    # Hook to corrupt or slow a blob body: (digest, data) -> data.
    blob_body: Callable[[str, bytes], bytes] | None = None
    requests: list[Recorded] = field(default_factory=list)
    storage_requests: list[Recorded] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    # OAuth2 (POST /token, grant_type=refresh_token): valid refresh tokens; with ``oauth`` False
    # the token server answers POST with 404, as token servers without OAuth2 do.
    oauth: bool = False
    refresh_tokens: set[str] = field(default_factory=set)
    rotate_refresh_tokens: bool = False
    oauth_requests: list[dict[str, str]] = field(default_factory=list)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (scope, expiry)
    _runners: list[web.AppRunner] = field(default_factory=list)
    url: str = ""
    storage_url: str = ""
    _serial: int = 0

    # -- content -------------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, tag: str | None, doc: dict[str, object]) -> str:
        body = json.dumps(doc, indent=1).encode()
        media_type = str(doc.get("mediaType", mediatypes.OCI_MANIFEST))
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[(repo, digest)] = (media_type, body)
        if tag is not None:
            self.manifests[(repo, tag)] = (media_type, body)
        return digest

    def blob_gets(self, digest: str) -> int:
        """GETs of ``digest`` answered with content (by the registry or its storage)."""
        return sum(1 for r in self.requests + self.storage_requests
                   if r.method == "GET" and r.path.endswith(digest) and r.status in (200, 206))

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    def count(self, method: str, suffix: str) -> int:
        return Counter((r.method, r.path.rsplit("/", 1)[-1]) for r in self.requests)[
            (method, suffix)]

    # -- servers -------------------------------------------------------------------------------

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_post("/token", self._oauth_token)
        app.router.add_route("*", r"/v2/{tail:.*}", self._v2)
        storage = web.Application()
        storage.router.add_get(r"/data/{digest}", self._storage)
        for a in (app, storage):
            runner = web.AppRunner(a, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
        self.url = _url_of(self._runners[0])
        self.storage_url = _url_of(self._runners[1])
        return self

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # -- handlers ------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        if self.users:
            user = _basic_user(request.headers.get("Authorization"), self.users)
            if user is None:
                return web.json_response({"details": "bad credentials"}, status=401)
        self._serial += 1
        token = f"tok-{self._serial}"
        scope = request.query.get("scope", "")
        self._tokens[token] = (scope, self.clock.now() + self.token_lifetime_s)
        return web.json_response({"token": token, "expires_in": self.token_lifetime_s})

    async def _oauth_token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.oauth_requests.append(form)
        if not self.oauth:
            return web.json_response({"details": "not found"}, status=404)
        if form.get("grant_type") != "refresh_token" or not form.get("client_id"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("refresh_token") not in self.refresh_tokens:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "refresh token expired"}, status=400)
        self._serial += 1
        token = f"oauth-{self._serial}"
        self._tokens[token] = (form.get("scope", ""), self.clock.now() + self.token_lifetime_s)
        answer: dict[str, object] = {"access_token": token, "expires_in": self.token_lifetime_s}
        if self.rotate_refresh_tokens:
            self.refresh_tokens.discard(form["refresh_token"])
            rotated = f"refresh-{self._serial}"
            self.refresh_tokens.add(rotated)
            answer["refresh_token"] = rotated
        return web.json_response(answer)

    def _authorized(self, request: web.Request, repo: str) -> bool:
        header = request.headers.get("Authorization", "")
        if self.token_auth:
            token = header.removeprefix("Bearer ")
            entry = self._tokens.get(token)
            return (entry is not None and entry[0] == f"repository:{repo}:pull"
                    and self.clock.now() < entry[1])
        if self.basic_auth:
            return _basic_user(header, self.users) is not None
        return True

    def _challenge(self, repo: str) -> dict[str, str]:
        if self.token_auth:
            return {"WWW-Authenticate": f'Bearer realm="{self.url}/token",'
                    f'service="fake-registry",scope="repository:{repo}:pull"'}
        return {"WWW-Authenticate": 'Basic realm="fake"'}

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        self.requests.append(Recorded(request.method, request.path, request.query_string,
                                      dict(request.headers), response.status))
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        for suffix, answers in self.script.items():
            if tail.endswith(suffix) and answers:
                status, headers = answers.pop(0)
                return web.json_response({"errors": [{"code": "SCRIPTED"}]}, status=status,
                                         headers=headers)
        m = re.fullmatch(r"(.+)/(manifests|blobs)/([^/]+)", tail)
        if tail == "":
            return web.json_response({})
        if tail.endswith("/tags/list"):
            return self._tags(request, tail.removesuffix("/tags/list"))
        if m is None:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
        repo, kind, ref = m.groups()
        if not self._authorized(request, repo):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                     headers=self._challenge(repo))
        if kind == "manifests":
            if self.hold_manifests is not None:
                await self.hold_manifests.wait()
            found = self.manifests.get((repo, ref))
            if found is None:
                return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
            media_type, body = found
            headers = {"Content-Type": media_type,
                       "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
            if request.method == "HEAD":
                headers["Content-Length"] = str(len(body))
                return web.Response(status=200, headers=headers)
            return web.Response(body=body, headers=headers)
        data = self.blobs.get(ref)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if self.redirect_blobs and request.method == "GET":
            return web.Response(status=307, headers={"Location": f"{self.storage_url}/data/{ref}"})
        return await _serve_bytes(request, ref, self._body(ref, data))

    def _tags(self, request: web.Request, repo: str) -> web.Response:
        """tags/list with ``n``/``last`` and a ``Link`` to the next page, as Distribution does."""
        if not self._authorized(request, repo):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                     headers=self._challenge(repo))
        tags = sorted(ref for (r, ref) in self.manifests if r == repo and ":" not in ref)
        if not tags:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
        last = request.query.get("last")
        after = [t for t in tags if last is None or t > last]
        n = int(request.query["n"]) if "n" in request.query else len(after)
        page = after[:n]
        headers = {}
        if len(after) > n and page:
            headers["Link"] = f'</v2/{repo}/tags/list?last={page[-1]}&n={n}>; rel="next"'
        return web.json_response({"name": repo, "tags": page}, headers=headers)

    def _body(self, digest: str, data: bytes) -> bytes:
        return self.blob_body(digest, data) if self.blob_body else data

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            response: web.StreamResponse = web.Response(status=404)
        else:
            response = await _serve_bytes(request, digest, self._body(digest, data))
        self.storage_requests.append(Recorded(request.method, request.path, request.query_string,
                                              dict(request.headers), response.status))
        return response


async def _serve_bytes(request: web.Request, digest: str, data: bytes) -> web.StreamResponse:
    headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
    rng = request.headers.get("Range")
    if rng:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
        if m is None or int(m.group(1)) >= len(data):
            return web.Response(status=416)
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return web.Response(status=206, body=data[start:end + 1], headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(data))
        return web.Response(status=200, headers=headers)
    return web.Response(body=data, headers=headers)


def _basic_user(header: str | None, users: dict[str, str]) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user if users.get(user) == password else None


def _url_of(runner: web.AppRunner) -> str:
    server = runner.addresses[0]
    return f"http://{server[0]}:{server[1]}"
