"""The peer endpoint: ``GET``/``HEAD /p2p/v1/blobs/<digest>`` (whole blob or one ``Range``) and
``GET /p2p/v1/tags/<registry>/<repository>/<tag>`` (this node's last confirmation of a tag).

Owns: ``P2PServer`` (its handlers, ``routes()`` for any aiohttp app, ``app()`` standalone),
``OwnerFill`` (how the node starts or joins a fill when asked as owner), ``TagLookup`` (how it
reads its own tag confirmations) and ``ServerStats``.

What a request gets, in order:

1. With a keyring: the cluster-key signature, timestamp and nonce are checked first
   (``auth.RequestVerifier``); any failure is ``401 UNAUTHORIZED`` with ``detail.reason``.
   Every peer request names its sender in ``P2preg-Node`` (the loop guard); without it: ``400``.
   A malformed digest is ``400 DIGEST_INVALID``; a bad ``Range`` ``416``; an unknown
   ``P2preg-Route`` ``400``. Every refusal is counted in ``ServerStats.rejected[reason]``.
2. A committed blob: sent zero-copy (``fileslice.send_file_slice``), ``200`` or ``206``.
3. A blob this node is filling right now: the bytes that have arrived so far, then the rest as
   they come (``fetch.reader.follow``). The last byte is held back until the fill verified the
   digest; when the fill fails the connection is aborted, so the receiver never takes a short
   or wrong body for a complete one.
4. Asked as ``owner`` (``P2preg-Route: owner`` with ``P2preg-Upstream``/``P2preg-Repository``):
   ``OwnerFill`` starts or joins this node's one fill of the blob and streams it (3.).
5. Anything else: ``404 BLOB_UNKNOWN`` at once. A peer request never makes this node fetch
   anything except as owner (the loop guard).

A **piece request** (``P2preg-Swarm: 1``, a ``Range`` inside one piece of
``swarm.pieces.Layout``) is answered by ``_handle_piece`` instead of 2.-4.:

- Every answer carries ``P2preg-Have`` (whole pieces on disk as a prefix, plus the pieces a
  swarm fill holds in memory), ``P2preg-Blob-Size`` once the size is known, and
  ``P2preg-Load``: the piece uploads this node runs (the asker prefers less loaded sources).
- A piece this node has: admitted by the ``swarm.uploads.UploadPolicy`` (per-piece cap, global
  slots, ``P2preg-Last-Resort``) and sent (from the committed file, the growing file, or the
  swarm fill's memory), else ``503`` with ``P2preg-Busy`` and ``P2preg-Hint``.
- A piece this node does not have yet: the **root** of the digest (``long_polls``: its fill
  streams in order from the upstream or a holder, or it is asked as owner and starts that
  fill) admits the request and sends the bytes as they arrive, waiting at most
  ``ROOT_WAIT_S`` for the size. A node whose swarm fill is **receiving** that piece right now
  passes its bytes on as they arrive (**cut-through**, ``pull.piece_feed``), unless the
  requester is the peer it receives the piece from, and only once a byte of it arrived
  (waiting at most ``CUT_THROUGH_WAIT_S``): a chain of such relays ends at a node that has
  the piece, and a cycle of them has no first byte and ends after that wait. Every other
  node answers ``404`` with its availability at once. A node asked as owner while its own
  fill is a swarm fill tells that fill (``check_owner``): the real owner may be gone.

**Joins** (coordinated forwarding, ``swarm.tracker``): a request with ``P2preg-Join`` (a
``HEAD``; ``P2preg-Join: complete`` from a node that holds the blob, ``P2preg-Lost`` with the
parents the asker lost) is answered by this node's tracker of the digest, made on the first
join (the asker computed this node as the digest's owner): ``200`` with ``P2preg-Parents``,
``answer_hold_s`` after it came (the joins of a burst move earlier places first). It never
starts a fill. A malformed ``P2preg-Lost`` is ignored (a plain join).

A piece request with ``P2preg-Child: 1`` comes from an assigned child in the piece's stripe: it
is admitted past the piece cap and the slots (``UploadPolicy.admit(child=True)``), and a node
whose swarm fill does not have the piece yet waits for it (its arrival or the first byte of
its own request for it) up to ``CHILD_WAIT_S`` instead of answering ``404``; the child treats
a ``404`` as a lost parent.

A tag request is authenticated the same way, its registry host, repository name and tag are
checked (``400 NAME_INVALID``/``TAG_INVALID``), and it is answered from ``TagLookup`` alone:
``200 {"digest": ..., "confirmed_at": ...}`` or ``404 MANIFEST_UNKNOWN``. It never makes this
node ask its peers or its upstream.

Must not import the mirror, gossip or node; the node's storage and fills come in as arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from p2preg.clock import Clock, MonotonicClock
from p2preg.fetch.reader import FollowedSpan
from p2preg.fetch.singleflight import Fill, FillError
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.names import validate_name, validate_tag
from p2preg.p2p.auth import (
    NODE_HEADER,
    REPOSITORY_HEADER,
    ROUTE_HEADER,
    UPSTREAM_HEADER,
    AuthFailure,
    RequestVerifier,
)
from p2preg.p2p.child_lines import ChildLines
from p2preg.p2p.routing import ROLE_OWNER, ROLES
from p2preg.p2p.source import BLOBS_PATH, BlobOrigin
from p2preg.p2p.tags import TAGS_PATH, validate_registry
from p2preg.registry.content import BlobContent
from p2preg.registry.fileslice import send_chunks, send_file_slice, send_growing_file
from p2preg.registry.ranges import ByteRange, RangeSpec, parse_range_header, resolve_range
from p2preg.registry.requestkeys import PEER_KEY, SOURCE_KEY
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import TagConfirmation
from p2preg.swarm.pieces import (
    BUSY_HEADER,
    BUSY_PIECE,
    CHILD_HEADER,
    HAVE_HEADER,
    HINT_HEADER,
    JOIN_COMPLETE,
    JOIN_HEADER,
    LAST_RESORT_HEADER,
    LOAD_HEADER,
    LOST_HEADER,
    PARENTS_HEADER,
    SIZE_HEADER,
    SWARM_HEADER,
    Have,
    Layout,
    decode_stripes,
    encode_hints,
    encode_stripes,
)
from p2preg.swarm.tracker import TrackerRegistry
from p2preg.swarm.uploads import UploadPolicy

log = logging.getLogger(__name__)

BLOB_ROUTE = BLOBS_PATH + "{digest}"
ROUTE_NAME = "p2p_blob"
TAG_ROUTE = TAGS_PATH + "{registry}/{repository:.+}/{tag}"
TAG_ROUTE_NAME = "p2p_tag"
_MAX_HEADER_CHARS = 512
_STARTED = web.RequestKey("p2preg_p2p_response_started", bool)


class PieceFeed(Protocol):
    """A piece arriving from ``source`` now (``pull.piece_feed.PieceFeed``)."""

    source: str
    start: int
    end: int
    from_root: bool

    async def first_byte(self, timeout: float) -> bool: ...

    def follow(self, offset: int, end: int) -> AsyncIterator[bytes]: ...


class PieceHolder(Protocol):
    """A swarm fill's pieces in memory (``pull.swarm_source.SwarmStream``)."""

    def piece(self, index: int) -> bytes | None: ...

    def receiving(self, index: int) -> PieceFeed | None: ...

    def have_in_memory(self) -> frozenset[int]: ...

    def check_owner(self) -> None: ...

    async def wait_piece(self, index: int, timeout: float) -> bool:
        """Until piece ``index`` is held or arriving (False: not within ``timeout``)."""
        ...


#: How long a root waits for its fill to learn the blob's size before answering a piece request.
ROOT_WAIT_S = 10.0
#: How long a node waits for the first byte of a piece it is receiving before passing it on
#: (cut-through); without one by then it answers ``404`` (this bounds any cycle of waits).
CUT_THROUGH_WAIT_S = 0.5
#: The same wait when the piece comes from the digest's owner (a root never waits on a peer).
ROOT_FEED_WAIT_S = 2.0
#: How long a node waits for a piece an assigned child asks before it has it (its own request
#: for the piece goes to its parent; a cycle of trackers' answers ends after this).
CHILD_WAIT_S = 10.0


class OwnerFill(Protocol):
    """Start or join the fill of ``digest`` from ``origin`` and return what to serve."""

    def __call__(self, digest: Digest, origin: BlobOrigin, byte_range: RangeSpec | None,
                 want_body: bool) -> Awaitable[BlobContent]: ...


TagLookup = Callable[[str, str, str], TagConfirmation | None]
"""``(registry, repository, tag)`` -> this node's own last confirmation of the tag, or None;
may raise ``RegistryError`` for a name it refuses."""


@dataclass
class ServerStats:
    """What the endpoint did: answers by kind and refusals by reason."""

    # local, in_progress, owner, not_found; tag, tag_unknown
    served: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)


class P2PServer:
    """The handlers of the peer endpoint over one node's store and fills."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        fills: Callable[[Digest], Fill | None] = lambda digest: None,
        owner_fill: OwnerFill | None = None,
        verifier: RequestVerifier | None = None,
        tags: TagLookup | None = None,
        uploads: UploadPolicy | None = None,
        swarms: Callable[[Digest], PieceHolder | None] = lambda digest: None,
        long_polls: Callable[[Digest], bool] = lambda digest: True,
        clock: Clock | None = None,
        trackers: TrackerRegistry | None = None,
    ) -> None:
        self._blobs = blobs
        self.uploads = uploads or UploadPolicy()
        self._swarms = swarms
        self._long_polls = long_polls
        self._clock = clock or MonotonicClock()
        self._fills = fills
        self._owner_fill = owner_fill
        self._verifier = verifier
        self._tags = tags
        self.trackers = trackers
        self.stats = ServerStats()
        self._child_lines = ChildLines()

    def routes(self) -> web.RouteTableDef:
        """The routes to add to an app: ``app.add_routes(server.routes())``."""
        table = web.RouteTableDef()
        table.get(BLOB_ROUTE, name=ROUTE_NAME, allow_head=True)(self.handle)
        table.get(TAG_ROUTE, name=TAG_ROUTE_NAME, allow_head=False)(self.handle_tag)
        return table

    def app(self) -> web.Application:
        """A stand-alone application serving only the peer endpoint."""
        application = web.Application()
        application.add_routes(self.routes())
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except RegistryError as exc:
            if request.get(_STARTED):
                raise
            return _error_response(request, exc)

    async def handle_tag(self, request: web.Request) -> web.StreamResponse:
        try:
            return self._handle_tag(request)
        except RegistryError as exc:
            return _error_response(request, exc)

    def _handle_tag(self, request: web.Request) -> web.Response:
        request[PEER_KEY] = self.authenticate(request)
        info = request.match_info
        try:
            registry = validate_registry(info["registry"])
            repository = validate_name(info["repository"])
            tag = validate_tag(info["tag"])
            confirmation = None if self._tags is None else self._tags(registry, repository, tag)
        except RegistryError as exc:
            self.stats.rejected["bad_tag" if exc.code == ErrorCode.TAG_INVALID
                                else "bad_name"] += 1
            raise
        if confirmation is None:
            self.stats.served["tag_unknown"] += 1
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN,
                                "this node has no confirmation of the tag",
                                {"registry": registry, "repository": repository, "tag": tag})
        self.stats.served["tag"] += 1
        return web.json_response({"digest": confirmation.digest,
                                  "confirmed_at": confirmation.confirmed_at})

    # -- the request -----------------------------------------------------------------------------

    def _reject(self, reason: str, code: ErrorCode, message: str,
                status: int | None = None) -> RegistryError:
        self.stats.rejected[reason] += 1
        return RegistryError(code, message, {"reason": reason}, status=status)

    def authenticate(self, request: web.Request) -> str:
        """The requesting peer's node name (signature checked with a keyring); raises the
        ``RegistryError`` to answer otherwise. Also used by the wrong-bytes report route."""
        headers = request.headers
        if self._verifier is not None:
            try:
                node = self._verifier.verify(request.method, request.raw_path, headers).node
            except AuthFailure as exc:
                log.info("refused peer request %s from %s: %s", request.path,
                         request.remote, exc.message)
                raise self._reject(exc.reason, ErrorCode.UNAUTHORIZED, exc.message,
                                   status=503 if exc.reason == "overloaded" else 401) from None
        else:
            node = headers.get(NODE_HEADER, "")
        if not node or len(node) > _MAX_HEADER_CHARS:
            raise self._reject("not_a_peer", ErrorCode.UNSUPPORTED,
                               f"peer requests must name their node in {NODE_HEADER}",
                               status=400)
        return node

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        node = self.authenticate(request)
        request[PEER_KEY] = node
        try:
            digest = parse_digest(request.match_info["digest"])
        except RegistryError as exc:
            self.stats.rejected["bad_digest"] += 1
            raise exc
        role = request.headers.get(ROUTE_HEADER, "holder")
        if role not in ROLES:
            raise self._reject("bad_route", ErrorCode.UNSUPPORTED,
                               f"{ROUTE_HEADER} must be one of {sorted(ROLES)}", status=400)
        try:
            spec = parse_range_header(request.headers.get("Range"))
        except RegistryError as exc:
            self.stats.rejected["bad_range"] += 1
            known = self._blobs.size(digest)
            if known is not None:  # 416 names the size when it is known (as /v2 does)
                exc.headers["Content-Range"] = f"bytes */{known}"
            raise
        want_body = request.method != "HEAD"
        if JOIN_HEADER in request.headers:
            return await self._handle_join(request, node, digest)
        if request.headers.get(SWARM_HEADER) == "1" and want_body and spec is not None:
            return await self._handle_piece(request, node, digest, role, spec)

        size = self._blobs.size(digest)
        if size is not None:
            return await self._send_committed(request, digest, size, spec, want_body)
        fill = self._fills(digest)
        if fill is not None:
            return await self._send_fill(request, digest, fill, spec, want_body)
        if role == ROLE_OWNER and self._owner_fill is not None:
            origin = _origin(request)
            if origin is None:
                raise self._reject("no_origin", ErrorCode.UNSUPPORTED,
                                   f"an owner request needs {UPSTREAM_HEADER} and "
                                   f"{REPOSITORY_HEADER}", status=400)
            content = await self._owner_fill(digest, origin, spec, want_body)
            self.stats.served["owner"] += 1
            return await self._send_content(request, content, want_body)
        self.stats.served["not_found"] += 1
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, "this node neither holds nor fetches the blob",
                            {"digest": str(digest)})

    # -- joins -----------------------------------------------------------------------------------

    async def _handle_join(self, request: web.Request, node: str,
                           digest: Digest) -> web.StreamResponse:
        trackers = self.trackers
        if trackers is None:
            self.stats.served["join_refused"] += 1
            raise RegistryError(ErrorCode.UNSUPPORTED, "this node keeps no trackers",
                                {"digest": str(digest)}, status=404)
        lost: dict[int, str] = {}
        with contextlib.suppress(ValueError):
            lost = decode_stripes(request.headers.get(LOST_HEADER, "")) \
                if request.headers.get(LOST_HEADER) else {}
        complete = request.headers.get(JOIN_HEADER) == JOIN_COMPLETE
        trackers.join(str(digest), node, now=self._clock.now(), complete=complete, lost=lost)
        self.stats.served["join"] += 1
        await self._clock.sleep(trackers.config.answer_hold_s)
        response = web.Response(status=200)
        response.headers[PARENTS_HEADER] = encode_stripes(trackers.parents(str(digest), node))
        return response

    # -- pieces ----------------------------------------------------------------------------------

    async def _handle_piece(self, request: web.Request, node: str, digest: Digest, role: str,
                            spec: RangeSpec) -> web.StreamResponse:
        arrived = self._clock.now()
        size = self._blobs.size(digest)
        fill = None if size is not None else self._fills(digest)
        if size is None and fill is None and role == ROLE_OWNER and self._owner_fill is not None:
            origin = _origin(request)
            if origin is None:
                raise self._reject("no_origin", ErrorCode.UNSUPPORTED,
                                   f"an owner request needs {UPSTREAM_HEADER} and "
                                   f"{REPOSITORY_HEADER}", status=400)
            content = await self._owner_fill(digest, origin, None, True)
            await _close(content.chunks)
            size = self._blobs.size(digest)
            fill = None if size is not None else self._fills(digest)
        swarm = self._swarms(digest) if fill is not None else None
        root = fill is not None and swarm is None and self._long_polls(digest)
        if swarm is not None and role == ROLE_OWNER:
            swarm.check_owner()
        if fill is not None:
            if root and fill.size is None:
                with contextlib.suppress(FillError, TimeoutError):
                    await asyncio.wait_for(fill.ready(), ROOT_WAIT_S)
            size = fill.size
        if size is None:
            self.stats.served["piece_missing"] += 1
            if request.headers.get(CHILD_HEADER) == "1":
                self.stats.served["piece_missing_child_nosize"] += 1
            return _piece_answer(404, Have(), None, self.uploads.active)
        layout = Layout.for_size(size)
        have = _have_now(layout, fill, swarm)
        byte_range = resolve_range(spec, size)
        piece = layout.piece_at(byte_range.start)
        if byte_range.end >= layout.span(piece)[1]:
            raise self._reject("bad_piece", ErrorCode.UNSUPPORTED,
                               "a piece request must stay inside one piece", status=400)
        in_memory = swarm.piece(piece) if swarm is not None else None
        child = request.headers.get(CHILD_HEADER) == "1"
        feed = None
        if swarm is not None and in_memory is None and not have.has(piece):
            if child:
                feed, in_memory = await self._child_wait(swarm, node, piece, byte_range, fill,
                                                         layout)
                if in_memory is not None or feed is not None:
                    have = _have_now(layout, fill, swarm)
                elif self._swarms(digest) is not swarm and fill is not None:
                    # The swarm stream ended: the fill went on from the upstream (this node
                    # took over from a dead owner): serve as a root, from the growing file.
                    root = self._long_polls(digest)
                    have = _have_now(layout, fill, None)
            else:
                feed = _usable_feed(swarm.receiving(piece), node, byte_range)
                if feed is not None and not await feed.first_byte(
                        ROOT_FEED_WAIT_S if feed.from_root else CUT_THROUGH_WAIT_S):
                    feed = None
        if not have.has(piece) and in_memory is None and feed is None and not root:
            self.stats.served["piece_missing"] += 1
            self.stats.served["piece_missing_child"] += child
            return _piece_answer(404, have, size, self.uploads.active)
        if not child:
            return await self._admit_and_send(request, digest, node, size, byte_range, fill,
                                              in_memory, have, feed, layout, piece, child)
        # One answer at a time per child (``child_lines``), in the order they got ready.
        lines, key = self._child_lines, str(digest)
        async with lines.turn(key, node):
            now = self._clock.now()
            self.stats.served["piece_child_wait_ms"] += round(1000 * (now - arrived))
            idle = lines.idle_before(key, node, arrived)
            if idle is not None:
                self.stats.served["piece_child_next"] += 1
                self.stats.served["piece_child_gap_ms"] += round(1000 * idle)
            try:
                return await self._admit_and_send(request, digest, node, size, byte_range,
                                                  fill, in_memory, have, feed, layout, piece,
                                                  child)
            finally:
                lines.ended(key, node, self._clock.now())

    async def _admit_and_send(self, request: web.Request, digest: Digest, node: str,
                              size: int, byte_range: ByteRange, fill: Fill | None,
                              in_memory: bytes | None, have: Have, feed: PieceFeed | None,
                              layout: Layout, piece: int, child: bool) -> web.StreamResponse:
        last_resort = request.headers.get(LAST_RESORT_HEADER) == "1"
        admission = self.uploads.admit(str(digest), piece, node, now=self._clock.now(),
                                       last_resort=last_resort, seed=fill is None, child=child)
        if child:
            self.stats.served["piece_child"] += 1
        if admission.ticket is None:
            self.stats.served["piece_busy"] += 1
            response = _piece_answer(503, have, size, self.uploads.active)
            response.headers[BUSY_HEADER] = admission.busy or BUSY_PIECE
            if admission.hints:
                response.headers[HINT_HEADER] = encode_hints(admission.hints)
            return response
        completed = False
        try:
            answer = await self._send_piece(request, digest, size, byte_range, fill, in_memory,
                                            have, feed, layout.span(piece)[0])
            completed = True
            return answer
        finally:
            self.uploads.release(admission.ticket, completed=completed, now=self._clock.now())

    async def _child_wait(self, swarm: PieceHolder, node: str, piece: int,
                          byte_range: ByteRange, fill: Fill | None, layout: Layout
                          ) -> tuple[PieceFeed | None, bytes | None]:
        """An assigned child's piece this node does not have: wait (up to ``CHILD_WAIT_S``)
        until it holds it or receives it with a first byte; this node's own request for the
        piece may end without it (a moved place, a lost parent) and be sent again."""
        deadline = self._clock.now() + CHILD_WAIT_S
        self.stats.served["piece_child_wait"] += 1
        while (left := deadline - self._clock.now()) > 0:
            in_memory = swarm.piece(piece)
            if in_memory is not None or (
                    fill is not None and layout.whole_pieces(fill.writer.size) > piece):
                return None, in_memory
            feed = swarm.receiving(piece)
            if feed is not None:
                feed = _usable_feed(feed, node, byte_range)
                if feed is None:
                    return None, None  # the child is our source of it: never wait on it
                if await feed.first_byte(left):
                    return feed, None
                continue  # that request ended without the piece: wait for the next
            if not await swarm.wait_piece(piece, left):
                break
        return None, None

    async def _send_piece(self, request: web.Request, digest: Digest, size: int,
                          byte_range: ByteRange, fill: Fill | None, in_memory: bytes | None,
                          have: Have, feed: PieceFeed | None, piece_start: int
                          ) -> web.StreamResponse:
        self.stats.served["piece"] += 1
        request[SOURCE_KEY] = "local" if fill is None else fill.source_kind or "upstream"
        response = web.StreamResponse(status=206)
        _set_headers(response, digest, byte_range)
        _set_have(response, have, size, self.uploads.active)
        offset, count = byte_range.start, byte_range.length
        if in_memory is not None:
            body = in_memory[offset - piece_start: offset - piece_start + count]
            request[_STARTED] = True
            response.content_length = count
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response
        if feed is not None:  # cut-through: the bytes as they arrive from our source
            self.stats.served["piece_cut_through"] += 1
            request[_STARTED] = True
            return await send_chunks(request, response, feed.follow(offset, offset + count),
                                     count)
        if fill is None:
            return await _send_file(request, response, self._blobs.path(digest), digest,
                                    offset, count)
        # The receiver hashes the whole blob before it commits: no byte needs holding back.
        span = FollowedSpan(fill, offset, offset + count, hold_last_byte=False)
        return await send_growing_file(request, response, span, count)

    # -- answers ---------------------------------------------------------------------------------

    async def _send_committed(self, request: web.Request, digest: Digest, size: int,
                              spec: RangeSpec | None, want_body: bool) -> web.StreamResponse:
        resolved = None if spec is None else resolve_range(spec, size)
        self.stats.served["local"] += 1
        path = self._blobs.path(digest) if want_body else None
        return await self._send_content(
            request, BlobContent(digest, size, resolved, path=path, source="local"), want_body)

    async def _send_fill(self, request: web.Request, digest: Digest, fill: Fill,
                         spec: RangeSpec | None, want_body: bool) -> web.StreamResponse:
        try:
            total = await fill.ready()
            if total is None:  # the source said no size: serve the blob once committed
                await fill.wait()
        except FillError as exc:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"the fill of this blob failed: "
                                f"{exc.reason}", {"digest": str(digest)}) from None
        if total is None:
            size = self._blobs.size(digest)
            if size is None:
                raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob vanished after its fill",
                                    {"digest": str(digest)})
            return await self._send_committed(request, digest, size, spec, want_body)
        resolved = None if spec is None else resolve_range(spec, total)
        start, end = (0, total) if resolved is None else (resolved.start, resolved.end + 1)
        self.stats.served["in_progress"] += 1
        span = FollowedSpan(fill, start, end) if want_body else None
        content = BlobContent(digest, total, resolved, source=fill.source_kind or "upstream",
                              growing=span)
        return await self._send_content(request, content, want_body)

    async def _send_content(self, request: web.Request, content: BlobContent,
                            want_body: bool) -> web.StreamResponse:
        request[SOURCE_KEY] = content.source
        response = web.StreamResponse(status=200 if content.byte_range is None else 206)
        _set_headers(response, content.digest, content.byte_range)
        offset, count = _span(content.size, content.byte_range)
        if not want_body:
            await _close(content.chunks)
            response.content_length = count
            return response
        if content.path is not None:
            return await _send_file(request, response, content.path, content.digest,
                                    offset, count)
        if content.growing is not None:
            # Zero-copy like a committed file, range by range as the fill grows. Not marked
            # started: a fill that already failed is refused (BLOB_UNKNOWN) before any header.
            return await send_growing_file(request, response, content.growing, count)
        if content.chunks is None:
            raise RegistryError(ErrorCode.UNKNOWN, "nothing to send", status=500)
        request[_STARTED] = True
        return await send_chunks(request, response, content.chunks, count)


async def _send_file(request: web.Request, response: web.StreamResponse, path: Path,
                     digest: Digest, offset: int, count: int) -> web.StreamResponse:
    """Bytes ``[offset, offset + count)`` of a committed blob's file (zero-copy)."""
    try:
        fobj = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, "blob unknown to this node",
                            {"digest": str(digest)}) from None
    request[_STARTED] = True
    return await send_file_slice(request, response, fobj, offset, count)


def _have_now(layout: Layout, fill: Fill | None, swarm: PieceHolder | None) -> Have:
    """What this node holds of the blob now: whole pieces on disk (all of them once committed,
    ``fill`` None) and those ``swarm`` holds in memory."""
    on_disk = layout.count if fill is None else layout.whole_pieces(fill.writer.size)
    return Have.of(on_disk, swarm.have_in_memory() if swarm is not None else ())


def _usable_feed(feed: PieceFeed | None, node: str, byte_range: ByteRange) -> PieceFeed | None:
    """``feed`` unless the requester is our source of the piece or asks outside its span."""
    if feed is None or feed.source == node or byte_range.start < feed.start \
            or byte_range.end >= feed.end:
        return None
    return feed


def _origin(request: web.Request) -> BlobOrigin | None:
    registry = request.headers.get(UPSTREAM_HEADER, "")
    repository = request.headers.get(REPOSITORY_HEADER, "")
    if not registry or not repository or len(registry) > _MAX_HEADER_CHARS:
        return None
    validate_name(repository)
    return BlobOrigin(registry, repository)


def _piece_answer(status: int, have: Have, size: int | None, load: int) -> web.Response:
    response = web.Response(status=status)
    _set_have(response, have, size, load)
    return response


def _set_have(response: web.StreamResponse, have: Have, size: int | None, load: int) -> None:
    response.headers[HAVE_HEADER] = have.encode()
    response.headers[LOAD_HEADER] = str(load)
    if size is not None:
        response.headers[SIZE_HEADER] = str(size)


def _span(size: int, byte_range: ByteRange | None) -> tuple[int, int]:
    return (0, size) if byte_range is None else (byte_range.start, byte_range.length)


def _set_headers(response: web.StreamResponse, digest: Digest,
                 byte_range: ByteRange | None) -> None:
    response.content_type = "application/octet-stream"
    response.headers["Docker-Content-Digest"] = str(digest)
    response.headers["Accept-Ranges"] = "bytes"
    if byte_range is not None:
        response.headers["Content-Range"] = byte_range.content_range()


async def _close(chunks: AsyncIterator[bytes] | None) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def _error_response(request: web.Request, error: RegistryError) -> web.Response:
    headers = dict(error.headers)
    if request.method == "HEAD":
        return web.Response(status=error.status, headers=headers)
    return web.Response(status=error.status, body=error.body_bytes(),
                        content_type="application/json", headers=headers)
