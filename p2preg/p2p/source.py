"""``PeerBlobSource``: a peer's ``/p2p/v1/blobs/<digest>`` as a ``fetch.BlobSource``.

Owns: ``PeerBlobSource`` and its stream, ``PeerClientConfig`` (timeouts), ``BlobOrigin`` (the
upstream registry and repository an owner needs to start the fill), ``Ledger`` (which peers
delivered how many bytes to one fill, so wrong bytes can be blamed) and ``PeerError``.

Rules:
- It verifies nothing: the fill hashes every byte and commits only a match. It only checks what
  the HTTP exchange itself promises: a ``206`` starts exactly at the offset asked for (a resume
  with ``Range: bytes=<offset>-``), a ``200`` only answers offset 0, the size is known, the body
  is as long as announced and ``Docker-Content-Digest`` (when sent) names the digest asked for.
- Every request carries the loop guard (``P2preg-Node``, ``P2preg-Route``) and, with a keyring,
  the cluster-key signature. Only a request with role ``owner`` carries ``P2preg-Upstream`` and
  ``P2preg-Repository``: the owner may fill from that upstream for us.
- Every failure is a ``PeerError`` (an ``OSError``: the fill moves on to the next source and
  resumes at the byte it reached), except a ``404`` which is ``UpstreamNotFound`` (the peer does
  not have it; not held against it). Failures are reported to ``on_failure`` (penalties).
- Timeouts come from aiohttp's socket timeouts: ``connect_timeout_s`` to connect and
  ``idle_timeout_s`` between two reads (a stalled or dead peer, or two fetchers waiting on each
  other after membership views disagreed, are given up on after that).

Must not import the registry package, storage or gossip.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

from p2preg.oci.digest import Digest
from p2preg.p2p.auth import (
    NODE_HEADER,
    REPOSITORY_HEADER,
    ROUTE_HEADER,
    UPSTREAM_HEADER,
    RequestSigner,
)
from p2preg.p2p.routing import ROLE_OWNER, Candidate
from p2preg.upstream.errors import UpstreamNotFound

BLOBS_PATH = "/p2p/v1/blobs/"
#: A ``Content-Range`` of a 206 answer: first byte, last byte, total.
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class PeerError(ConnectionError):
    """A peer could not deliver (unreachable, broke off, timed out, answered nonsense)."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PeerClientConfig:
    """Timeouts of peer blob requests, and their scheme (``https`` in a cluster serving TLS)."""

    connect_timeout_s: float = 3.0
    idle_timeout_s: float = 30.0
    scheme: str = "http"


@dataclass(frozen=True, slots=True)
class BlobOrigin:
    """The upstream a blob is pulled for: registry host and repository there."""

    registry: str
    repository: str


@dataclass
class Ledger:
    """Bytes each peer delivered to one fill (``peer name -> bytes``)."""

    delivered: dict[str, int] = field(default_factory=dict)

    def add(self, peer: str, nbytes: int) -> None:
        self.delivered[peer] = self.delivered.get(peer, 0) + nbytes


FailureCallback = Callable[[str, str], None]
"""Called with (peer name, reason) when a peer failed to deliver."""


class PeerBlobSource:
    """One peer as a source of one fill (see the module docstring)."""

    kind = "peer"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        candidate: Candidate,
        *,
        node_name: str,
        signer: RequestSigner | None = None,
        origin: BlobOrigin | None = None,
        config: PeerClientConfig | None = None,
        ledger: Ledger | None = None,
        on_failure: FailureCallback | None = None,
    ) -> None:
        self.candidate = candidate
        self.peer = candidate.peer
        self.name = f"peer {self.peer.name} ({candidate.role})"
        self._session = session
        self._node_name = node_name
        self._signer = signer
        self._origin = origin
        self._config = config or PeerClientConfig()
        self.ledger = ledger or Ledger()
        self._on_failure = on_failure or (lambda peer, reason: None)

    def request_headers(self, path: str, offset: int) -> dict[str, str]:
        """The headers of a request for ``path`` from ``offset`` (signed with a keyring)."""
        headers = {NODE_HEADER: self._node_name, ROUTE_HEADER: self.candidate.role}
        if self.candidate.role == ROLE_OWNER and self._origin is not None:
            headers[UPSTREAM_HEADER] = self._origin.registry
            headers[REPOSITORY_HEADER] = self._origin.repository
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        if self._signer is not None:
            headers.update(self._signer.sign("GET", path, headers))
        return headers

    def _fail(self, reason: str) -> PeerError:
        self._on_failure(self.peer.name, reason)
        return PeerError(self.peer.name, reason)

    async def open(self, digest: Digest, offset: int) -> PeerBlobStream:
        path = f"{BLOBS_PATH}{digest}"
        url = f"{self._config.scheme}://{self.peer.http_addr}{path}"
        cfg = self._config
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                        sock_read=cfg.idle_timeout_s)
        try:
            response = await self._session.get(url, headers=self.request_headers(path, offset),
                                               timeout=timeout, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail(f"request failed: {_describe(exc)}") from exc
        try:
            size = self._check(response, digest, offset)
        except BaseException:
            response.release()
            raise
        return PeerBlobStream(self, response, offset, size)

    def _check(self, response: aiohttp.ClientResponse, digest: Digest, offset: int) -> int:
        status = response.status
        if status == 404:
            raise UpstreamNotFound(f"peer {self.peer.name}", "does not hold the blob",
                                   status=404)
        announced = response.headers.get("Docker-Content-Digest")
        if announced is not None and announced != str(digest):
            raise self._fail(f"answered for {announced} instead of {digest}")
        length = response.content_length
        if status == 200:
            if offset != 0:
                raise self._fail(f"ignored Range bytes={offset}-")
            if length is None:
                raise self._fail("sent no Content-Length")
            return length
        if status == 206:
            match = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None:
                raise self._fail("206 without a valid Content-Range")
            start, end, total = (int(g) for g in match.groups())
            if start != offset or end != total - 1 or (length is not None
                                                       and length != end - start + 1):
                raise self._fail(f"answered bytes {start}-{end}/{total} to bytes={offset}-")
            return total
        raise self._fail(f"answered HTTP {status}")


class PeerBlobStream:
    """An open response of a peer, from ``offset``; ``size`` is the whole blob's."""

    def __init__(self, source: PeerBlobSource, response: aiohttp.ClientResponse, offset: int,
                 size: int) -> None:
        self._source = source
        self._response = response
        self.offset = offset
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        source = self._source
        expected = (self.size or 0) - self.offset
        received = 0
        try:
            # The transport's own chunks: re-chunking to a fixed size would copy every byte.
            async for chunk, _ in self._response.content.iter_chunks():
                if not chunk:
                    continue
                received += len(chunk)
                source.ledger.add(source.peer.name, len(chunk))
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise source._fail(f"broke off after {received} bytes: {_describe(exc)}") from exc
        except asyncio.CancelledError:
            raise
        if received != expected:
            raise source._fail(f"sent {received} of {expected} bytes")

    async def __aenter__(self) -> PeerBlobStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._response.release()
        else:
            self._response.close()  # never reuse a connection left mid-body


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
