"""HTTP client for one upstream registry: manifests and blobs, GET and HEAD.

Owns: ``UpstreamClient`` (one aiohttp session per upstream with its TLS trust and three
deadlines: connect, first byte (the response headers, counted from the start of the exchange)
and idle (between body chunks); the challenge flow through ``Authenticator``; redirects followed
by hand so that ``Authorization`` never leaves the upstream's origin; retries with backoff on
connection errors, 5xx and 429 honouring ``Retry-After``; a ``CircuitBreaker`` that refuses at
once while the upstream was just silent or failing), ``FetchedManifest``, ``ManifestHead``,
``BlobStream`` and ``TagPage`` (one page of ``list_tags``, its ``Link`` read as where the next
page starts). Every failure is an ``UpstreamError``. Must not import storage, registry, gossip
or fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from p2preg.clock import Clock, MonotonicClock, WallClock
from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import RegistryError
from p2preg.oci.names import is_tag
from p2preg.upstream.auth import Authenticator, pull_scope
from p2preg.upstream.breaker import CircuitBreaker
from p2preg.upstream.config import UpstreamConfig
from p2preg.upstream.errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from p2preg.upstream.retry import RETRYABLE_STATUSES, backoff_delay_s, parse_retry_after

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: A tag list page larger than this is refused (Docker Hub's biggest repositories fit easily).
MAX_TAG_LIST_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 5
#: A ``Retry-After`` longer than this is not waited for: the client gets an error now.
MAX_RETRY_AFTER_S = 30.0
BLOB_CHUNK_BYTES = 256 * 1024
#: How much of a response body may wait in memory before the socket is paused (aiohttp: 64 KiB).
READ_BUFFER_BYTES = 4 * 1024 * 1024
#: Every manifest kind, so the cache holds what the upstream really has (an index stays an index).
ALL_MANIFEST_TYPES: tuple[str, ...] = (
    mediatypes.OCI_INDEX,
    mediatypes.DOCKER_MANIFEST_LIST,
    mediatypes.OCI_MANIFEST,
    mediatypes.DOCKER_MANIFEST,
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REL_NEXT = re.compile(r'\brel\s*=\s*"?next"?', re.IGNORECASE)

#: Observer of every upstream HTTP exchange: (kind, status) with kind in manifest/blob/token and
#: status the HTTP status, or "error" for a connection failure or timeout.
RequestObserver = Callable[[str, int | str], None]


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest body as the upstream sent it, with its verified digest."""

    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a HEAD on a manifest says: digest (when the upstream sends it), type and size."""

    digest: Digest | None
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class TagPage:
    """One page of an upstream's tag list; ``next_last`` is where the next page starts (None:
    this was the last page)."""

    tags: list[str]
    next_last: str | None


class BlobStream:
    """An open blob response from ``offset``; iterate ``chunks()`` then leave the context.

    ``size`` is the whole blob's size when the upstream said it (Content-Length or the total of
    Content-Range), else None. Leaving the context early closes the connection.
    """

    def __init__(
        self, resp: aiohttp.ClientResponse, registry: str, offset: int, size: int | None
    ) -> None:
        self._resp = resp
        self._registry = registry
        self.offset = offset
        self.size = size
        self.status = resp.status

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (whatever the transport delivered; no re-chunking copies)."""
        try:
            async for chunk, _ in self._resp.content.iter_chunks():
                if chunk:
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(
                self._registry, f"blob body broke off: {exc or type(exc).__name__}"
            ) from exc

    async def __aenter__(self) -> BlobStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._resp.closed:
            self._resp.close()


class UpstreamClient:
    """Pull-side client of one upstream registry (see ``UpstreamConfig``).

    ``clock`` paces retries (tests pass one that does not wait); ``rng`` jitters them.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        observer: RequestObserver | None = None,
        wall_clock: Clock | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or MonotonicClock()
        self._wall = wall_clock or WallClock()
        self._rng = rng or random.Random()
        self._observe = observer or (lambda kind, status: None)
        self._session: aiohttp.ClientSession | None = None
        self.breaker = CircuitBreaker(open_s=config.breaker_open_s,
                                      max_open_s=max(config.breaker_open_s,
                                                     config.breaker_max_open_s))
        self._last_failure = "failed just now"
        self._origin = URL(config.url).origin()
        self.auth = Authenticator(
            config.registry,
            self._get_session,
            self._clock,
            config.credentials,
            on_token_request=lambda status: self._observe("token", status),
            deadline_s=config.connect_timeout_s + config.first_byte_timeout_s,
        )

    # -- session -------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_ctx: ssl.SSLContext | bool = True
            if self.config.ca_file:
                ssl_ctx = ssl.create_default_context(cafile=self.config.ca_file)
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_request_sent)
            self._session = aiohttp.ClientSession(
                trace_configs=[trace],
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=64),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.config.connect_timeout_s,
                    sock_read=self.config.idle_timeout_s,
                ),
                auto_decompress=False,
                read_bufsize=READ_BUFFER_BYTES,
                headers={"User-Agent": "p2preg-mirror"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- manifests -----------------------------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES
    ) -> FetchedManifest:
        """GET a manifest by tag or digest; the body is checked against the digest."""
        resp = await self._request("GET", "manifest", repository,
                                   f"manifests/{reference}", {"Accept": ", ".join(accept)})
        try:
            self._raise_for_status(resp, "manifest", repository, reference)
            length = resp.content_length
            if length is not None and length > MAX_MANIFEST_BYTES:
                raise UpstreamProtocolError(self.config.registry,
                                            f"manifest {reference} is {length} bytes, over the "
                                            f"{MAX_MANIFEST_BYTES} limit")
            body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise UpstreamProtocolError(self.config.registry,
                                            f"manifest {reference} is over the size limit")
            header = resp.headers.get("Docker-Content-Digest")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(self.config.registry,
                                      f"manifest body broke off: {exc or type(exc).__name__}"
                                      ) from exc
        finally:
            resp.release()
        digest = self._manifest_digest(reference, header, body)
        media_type = _media_type(resp.headers.get("Content-Type"), body)
        return FetchedManifest(digest, media_type, body)

    async def head_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES
    ) -> ManifestHead:
        resp = await self._request("HEAD", "manifest", repository,
                                   f"manifests/{reference}", {"Accept": ", ".join(accept)})
        try:
            self._raise_for_status(resp, "manifest", repository, reference)
            header = resp.headers.get("Docker-Content-Digest")
            digest: Digest | None = None
            if header:
                digest = self._parse_digest(header)
            return ManifestHead(
                digest,
                _media_type(resp.headers.get("Content-Type"), b""),
                resp.content_length or 0,
            )
        finally:
            resp.release()

    def _manifest_digest(self, reference: str, header: str | None, body: bytes) -> Digest:
        if reference.startswith(("sha256:", "sha512:")):
            wanted = self._parse_digest(reference)
        elif header:
            wanted = self._parse_digest(header)
        else:
            return Digest("sha256", hashlib.sha256(body).hexdigest())
        actual = Digest(wanted.algorithm, hashlib.new(wanted.algorithm, body).hexdigest())
        if actual != wanted:
            raise UpstreamProtocolError(self.config.registry,
                                        f"manifest {reference} does not match its digest "
                                        f"{wanted} (got {actual})")
        return wanted

    def _parse_digest(self, value: str) -> Digest:
        try:
            return parse_digest(value.strip())
        except RegistryError as exc:
            raise UpstreamProtocolError(self.config.registry,
                                        f"sent an invalid digest {value!r}") from exc

    # -- tag lists -----------------------------------------------------------------------------

    async def list_tags(
        self, repository: str, n: int | None = None, last: str | None = None
    ) -> TagPage:
        """GET one page of ``repository``'s tags (``n``/``last`` passed through as given).

        The upstream's ``Link: <...?last=L...>; rel="next"`` becomes ``TagPage.next_last`` (the
        last tag of the page when the link carries no ``last``). A 404 is ``UpstreamNotFound``.
        """
        query = {key: value for key, value in (("n", n), ("last", last)) if value is not None}
        path = "tags/list" + (f"?{urlencode(query)}" if query else "")
        resp = await self._request("GET", "tags", repository, path, {"Accept": "application/json"})
        try:
            self._raise_for_status(resp, "tags of", repository, "list")
            body = await resp.content.read(MAX_TAG_LIST_BYTES + 1)
            link = resp.headers.get("Link")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(self.config.registry,
                                      f"tag list body broke off: {exc or type(exc).__name__}"
                                      ) from exc
        finally:
            resp.release()
        if len(body) > MAX_TAG_LIST_BYTES:
            raise UpstreamProtocolError(self.config.registry,
                                        f"tag list of {repository} is over the size limit")
        tags = _parse_tag_list(self.config.registry, repository, body)
        return TagPage(tags, _next_last(link, tags))

    # -- blobs ---------------------------------------------------------------------------------

    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> BlobStream:
        """Start a blob download at ``offset`` (a ``Range`` request when > 0)."""
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._request("GET", "blob", repository, f"blobs/{digest}", headers)
        try:
            self._raise_for_status(resp, "blob", repository, str(digest))
            if resp.status == 206:
                match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != offset:
                    raise UpstreamProtocolError(self.config.registry,
                                                f"blob {digest}: answered a Range from {offset} "
                                                f"with Content-Range "
                                                f"{resp.headers.get('Content-Range')!r}")
                total = match.group(3)
                size = int(total) if total != "*" else None
                return BlobStream(resp, self.config.registry, offset, size)
            if resp.status != 200:
                raise UpstreamProtocolError(self.config.registry,
                                            f"blob {digest}: unexpected status {resp.status}")
            stream = BlobStream(resp, self.config.registry, 0, resp.content_length)
            if offset > 0:
                await _skip(stream, offset)
            return stream
        except BaseException:
            resp.close()
            raise

    async def head_blob(self, repository: str, digest: Digest) -> int | None:
        """The blob's size per the upstream (None when it does not say); 404 -> not found."""
        resp = await self._request("HEAD", "blob", repository, f"blobs/{digest}", {})
        try:
            self._raise_for_status(resp, "blob", repository, str(digest))
            return resp.content_length
        finally:
            resp.release()

    # -- the request loop ----------------------------------------------------------------------

    def _raise_for_status(
        self, resp: aiohttp.ClientResponse, what: str, repository: str, reference: str
    ) -> None:
        if resp.status in (200, 206):
            return
        if resp.status == 404:
            raise UpstreamNotFound(self.config.registry,
                                   f"{what} {repository}:{reference} not found", status=404)
        if resp.status in (401, 403):
            raise UpstreamDenied(self.config.registry,
                                 f"denied access to {repository} ({resp.status})",
                                 status=resp.status)
        raise UpstreamProtocolError(self.config.registry,
                                    f"{what} {repository}:{reference}: answered {resp.status}",
                                    status=resp.status)

    async def _request(
        self, method: str, kind: str, repository: str, path: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send with auth, redirects and retries. The caller releases the response."""
        url = URL(f"{self.config.url}/v2/{repository}/{path}", encoded=False)
        admission = self.breaker.admit(self._clock.now())
        if not admission.allowed:
            raise UpstreamUnavailable(
                self.config.registry,
                f"{self._last_failure}; not asked again for {admission.retry_in_s:.1f} s "
                f"(circuit breaker open)")
        outcome = "abandoned"
        try:
            resp = await self._attempts(method, kind, repository, url, headers,
                                        1 if admission.probe else self.config.max_attempts)
            outcome = "success"
            return resp
        except UpstreamUnavailable as exc:
            outcome = "failure"
            self._last_failure = exc.reason
            raise
        except UpstreamError:
            outcome = "success"  # it answered (401, a bad redirect…): not silent
            raise
        finally:
            now = self._clock.now()
            if outcome == "success":
                self.breaker.success(now)
            elif outcome == "failure":
                self.breaker.failure(now)
            elif admission.probe:
                self.breaker.abandoned()

    async def _attempts(
        self, method: str, kind: str, repository: str, url: URL, headers: dict[str, str],
        max_attempts: int,
    ) -> aiohttp.ClientResponse:
        scope = pull_scope(repository)
        attempt = 0
        started = self._clock.now()
        reauthenticated = False
        authorization = await self.auth.header_for(scope)
        while True:
            attempt += 1
            send = dict(headers)
            if authorization is not None:
                send["Authorization"] = authorization
            retry_after: float | None = None
            why: str
            try:
                resp = await self._send(method, url, send, kind)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = f"{method} {url} failed: {_describe(exc)}"
            else:
                if resp.status == 401 and not reauthenticated:
                    challenge = resp.headers.get("WWW-Authenticate")
                    resp.release()
                    reauthenticated = True
                    attempt -= 1  # answering a challenge is not a failed attempt
                    authorization = await self.auth.answer(challenge, scope, authorization)
                    continue
                if resp.status == 401:
                    resp.release()
                    who = "the configured credentials" if self.config.credentials else \
                        "anonymous access"
                    raise UpstreamDenied(self.config.registry,
                                         f"refused {who} to {repository} (401 after "
                                         f"authenticating)", status=401)
                if resp.status not in RETRYABLE_STATUSES:
                    return resp
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._wall.now())
                why = f"{method} {url} answered {resp.status}"
                resp.release()
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    raise UpstreamUnavailable(self.config.registry,
                                              f"{why} and asks to retry after {retry_after:.0f} s",
                                              status=resp.status)
            if attempt >= max_attempts:
                raise UpstreamUnavailable(self.config.registry,
                                          f"{why} (after {attempt} attempts)")
            delay = backoff_delay_s(
                attempt, self._rng, base_s=self.config.backoff_base_s,
                max_s=self.config.backoff_max_s, retry_after_s=retry_after,
            )
            elapsed = self._clock.now() - started
            if elapsed + delay >= self.config.retry_budget_s:
                raise UpstreamUnavailable(self.config.registry,
                                          f"{why} (after {attempt} attempts in {elapsed:.1f} s)")
            await self._clock.sleep(delay)

    @property
    def is_marked_down(self) -> bool:
        """True while the breaker refuses requests (open, or half-open with its probe out)."""
        return self.breaker.is_open

    async def _send(
        self, method: str, url: URL, headers: dict[str, str], kind: str
    ) -> aiohttp.ClientResponse:
        """One exchange, following redirects; ``Authorization`` only goes to the upstream."""
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            if url.origin() != self._origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            try:
                # Until the request is sent: connect (and a pooled connection) within the connect
                # timeout; from then the response headers within the first-byte deadline (the
                # trace hook moves the deadline). The body is bounded per chunk by the session's
                # idle timeout.
                async with asyncio.timeout(None) as deadline:
                    loop = asyncio.get_running_loop()
                    deadline.reschedule(loop.time() + self.config.connect_timeout_s
                                        + self.config.first_byte_timeout_s)
                    resp = await session.request(
                        method, url, headers=headers, allow_redirects=False,
                        trace_request_ctx=_FirstByte(deadline, self.config.first_byte_timeout_s))
            except BaseException:
                self._observe(kind, "error")
                raise
            self._observe(kind, resp.status)
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.release()
            url = url.join(URL(location))
            if url.scheme not in ("http", "https"):
                raise UpstreamProtocolError(self.config.registry,
                                            f"redirected to a non-HTTP URL {location!r}")
        raise UpstreamProtocolError(self.config.registry,
                                    f"more than {MAX_REDIRECTS} redirects for {method} {url}")


def _parse_tag_list(registry: str, repository: str, body: bytes) -> list[str]:
    """The ``tags`` of a tags/list answer, each a valid tag (``null`` is an empty list)."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise UpstreamProtocolError(registry, f"tag list of {repository} is not JSON") from exc
    tags = document.get("tags") if isinstance(document, dict) else None
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) and is_tag(t) for t in tags):
        raise UpstreamProtocolError(registry, f"tag list of {repository} holds invalid tags")
    return tags


def _next_last(link: str | None, tags: Sequence[str]) -> str | None:
    """Where the next page starts per a ``Link: <URL>; rel="next"`` header; None: no next page."""
    if not link:
        return None
    for part in link.split(","):
        target, _, params = part.partition(";")
        if _REL_NEXT.search(params) is None:
            continue
        url = URL(target.strip().removeprefix("<").removesuffix(">"))
        value = url.query.get("last")
        if value is not None and is_tag(value):
            return value
        return tags[-1] if tags else None
    return None


@dataclass(slots=True)
class _FirstByte:
    """The deadline of one exchange, moved to ``first_byte_s`` after the request was sent."""

    deadline: asyncio.Timeout
    first_byte_s: float


async def _request_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    first_byte = getattr(context, "trace_request_ctx", None)
    if isinstance(first_byte, _FirstByte):
        first_byte.deadline.reschedule(asyncio.get_running_loop().time()
                                       + first_byte.first_byte_s)


async def _skip(stream: BlobStream, count: int) -> None:
    """Drop the first ``count`` bytes of a 200 answer to a Range request (no Range support)."""
    remaining = count
    content = stream._resp.content
    while remaining > 0:
        chunk = await content.read(min(remaining, BLOB_CHUNK_BYTES))
        if not chunk:
            raise UpstreamProtocolError(stream._registry, "blob ended before the resume offset")
        remaining -= len(chunk)
    stream.offset = count


def _media_type(content_type: str | None, body: bytes) -> str:
    value = (content_type or "").split(";")[0].strip().lower()
    if value and value not in ("application/json", "text/plain", "application/octet-stream"):
        return value
    if body:
        return mediatypes.of_manifest_body(body)
    return value or mediatypes.OCI_MANIFEST


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


__all__ = [
    "ALL_MANIFEST_TYPES",
    "BlobStream",
    "FetchedManifest",
    "ManifestHead",
    "TagPage",
    "UpstreamClient",
    "UpstreamError",
]
