"""Tags from peers while the upstream is down: the client side of ``/p2p/v1/tags/...``.

Owns: ``TAGS_PATH`` and ``tag_path`` (the endpoint's URL grammar, shared with the server),
``validate_registry``, ``TagAnswer`` (one peer's own last confirmation of a tag),
``parse_answer`` (the strict reading of a peer's JSON) and ``ask_peers`` (ask a few peers at
once, each bounded by a timeout). Which peers to ask is the caller's choice (``node_glue``).

Rules:
- A peer answers from its own records only (what its upstream confirmed, or what it took from a
  peer together with that peer's confirmation time); it never asks further. So one lookup costs
  at most ``len(peers)`` small requests and never reaches an upstream.
- Every answer is checked: a JSON object with a valid ``digest`` and a finite ``confirmed_at``
  no later than the asker's clock plus the allowed skew (later is nonsense: refused). Answers
  and failures never raise: a peer that fails (unreachable, timed out, nonsense) is reported to
  ``on_failure`` and left out. A ``404`` (the peer does not know the tag) is no failure.
- What a peer names is a claim, not content: the caller fetches the manifest by digest and
  checks its bytes before serving anything.

Must not import the registry package, storage or gossip.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.oci.names import validate_name, validate_tag
from p2preg.p2p.auth import NODE_HEADER, RequestSigner
from p2preg.p2p.routing import Peer

log = logging.getLogger(__name__)

TAGS_PATH = "/p2p/v1/tags/"
DEFAULT_TAG_PEERS = 3
DEFAULT_TAG_TIMEOUT_S = 1.0
MAX_ANSWER_BYTES = 1024
_REGISTRY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?$")


def validate_registry(registry: str) -> str:
    """Return ``registry`` if it is a normalized registry host (``docker.io``, ``host:5000``),
    else raise ``NAME_INVALID``."""
    if _REGISTRY_RE.match(registry) is None:
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid registry host",
                            {"registry": registry})
    return registry


def tag_path(registry: str, repository: str, tag: str) -> str:
    """``/p2p/v1/tags/<registry>/<repository>/<tag>``; raises ``NAME_INVALID``/``TAG_INVALID``.

    Every character the three grammars allow is a plain URL path character: the path is sent
    and signed exactly as built.
    """
    return (f"{TAGS_PATH}{validate_registry(registry)}/{validate_name(repository)}/"
            f"{validate_tag(tag)}")


@dataclass(frozen=True, slots=True)
class TagAnswer:
    """``peer`` last confirmed that the tag pointed at ``digest`` at ``confirmed_at`` (its wall
    clock, seconds)."""

    peer: str
    digest: Digest
    confirmed_at: float


def parse_answer(peer: str, body: bytes, *, now: float, max_skew_s: float) -> TagAnswer:
    """A peer's ``{"digest": ..., "confirmed_at": ...}``; ``ValueError`` saying what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("answer is not a JSON object")
    digest, confirmed_at = doc.get("digest"), doc.get("confirmed_at")
    if not isinstance(digest, str):
        raise ValueError("answer has no digest")
    try:
        parsed = parse_digest(digest)
    except RegistryError:
        raise ValueError(f"answer has an invalid digest {digest[:80]!r}") from None
    if isinstance(confirmed_at, bool) or not isinstance(confirmed_at, int | float) \
            or not math.isfinite(confirmed_at):
        raise ValueError("answer has no valid confirmed_at")
    if confirmed_at > now + max_skew_s:
        raise ValueError(f"answer is confirmed {confirmed_at - now:.0f}s in the future")
    return TagAnswer(peer, parsed, float(confirmed_at))


FailureCallback = Callable[[str, str], None]
"""Called with (peer name, reason) when a peer failed to answer."""


@dataclass(frozen=True, slots=True)
class TagAsk:
    """What ``ask_peers`` needs besides the peers: who asks and how."""

    node_name: str
    signer: RequestSigner | None = None
    scheme: str = "http"
    timeout_s: float = DEFAULT_TAG_TIMEOUT_S
    max_skew_s: float = 30.0


async def ask_peers(
    session: aiohttp.ClientSession,
    peers: Sequence[Peer],
    path: str,
    ask: TagAsk,
    *,
    now: Callable[[], float],
    on_failure: FailureCallback | None = None,
) -> list[TagAnswer]:
    """Every valid answer of ``peers`` for ``path`` (``tag_path``), freshest first. The peers
    are asked at once; each request is bounded by ``ask.timeout_s`` in all."""
    failed = on_failure or (lambda peer, reason: None)

    async def one(peer: Peer) -> TagAnswer | None:
        try:
            return await _ask(session, peer, path, ask, now)
        except _PeerFailed as exc:
            log.info("tag lookup %s at peer %s failed: %s", path, peer.name, exc.reason)
            failed(peer.name, exc.reason)
            return None

    answers = await asyncio.gather(*(one(peer) for peer in peers))
    return sorted((a for a in answers if a is not None), key=lambda a: -a.confirmed_at)


class _PeerFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _ask(session: aiohttp.ClientSession, peer: Peer, path: str, ask: TagAsk,
               now: Callable[[], float]) -> TagAnswer | None:
    headers = {NODE_HEADER: ask.node_name}
    if ask.signer is not None:
        headers.update(ask.signer.sign("GET", path, headers))
    url = URL(f"{ask.scheme}://{peer.http_addr}{path}", encoded=True)
    timeout = aiohttp.ClientTimeout(total=ask.timeout_s)
    try:
        async with session.get(url, headers=headers, timeout=timeout,
                               allow_redirects=False) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise _PeerFailed(f"answered HTTP {response.status}")
            body = await _read_capped(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _PeerFailed(f"request failed: {type(exc).__name__}: {exc}") from None
    try:
        return parse_answer(peer.name, body, now=now(), max_skew_s=ask.max_skew_s)
    except ValueError as exc:
        raise _PeerFailed(str(exc)) from None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_ANSWER_BYTES:
        raise _PeerFailed(f"answer of {response.content_length} bytes is too big")
    body = bytearray()
    while chunk := await response.content.read(MAX_ANSWER_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _PeerFailed("answer is too big")
    return bytes(body)
