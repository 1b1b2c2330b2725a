"""Peer request signing: HMAC-SHA256 with the cluster keyring over the request's identity.

Owns: the header names of a signed peer request, ``RequestSigner`` (the sending side: adds
``P2preg-Date``, ``P2preg-Nonce`` and ``P2preg-Signature``), ``RequestVerifier`` (the receiving
side: signature with any key of the keyring, so a rotated-in key is accepted at once; a
timestamp within ``max_skew_s`` of this node's wall clock; a nonce never seen within that
window) and ``AuthFailure`` (why a request was refused, with a stable ``reason`` for metrics).

What is signed (``canonical_request``)::

    p2preg-p2p-v1 \\n METHOD \\n PATH?QUERY \\n DATE \\n NONCE \\n then every header of
    SIGNED_HEADERS as ``name:value`` (empty when absent), one per line

The ``p2preg-p2p-v1`` prefix keeps these MACs apart from gossip packet MACs made with the same
keys. Nonces are recorded only after the signature verified, so nobody without a key can fill
the replay cache; the cache holds a nonce until its timestamp leaves the skew window (after
that the timestamp alone rejects it) and is bounded by ``max_nonces``.

Pure apart from reading the injected clock; must not import aiohttp, storage, fetch or registry.
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from p2preg.clock import Clock, WallClock
from p2preg.gossip.wire import Keyring

DATE_HEADER = "P2preg-Date"
NONCE_HEADER = "P2preg-Nonce"
SIGNATURE_HEADER = "P2preg-Signature"
NODE_HEADER = "P2preg-Node"
"""The requesting node's name: the loop-guard marker of every peer request."""
ROUTE_HEADER = "P2preg-Route"
UPSTREAM_HEADER = "P2preg-Upstream"
REPOSITORY_HEADER = "P2preg-Repository"
SIGNED_HEADERS: tuple[str, ...] = (NODE_HEADER, ROUTE_HEADER, UPSTREAM_HEADER,
                                   REPOSITORY_HEADER, "Range")

SIGNATURE_SCHEME = "v1"
DEFAULT_MAX_SKEW_S = 30.0
DEFAULT_MAX_NONCES = 200_000
_NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")
_SIGNATURE_RE = re.compile(r"^v1=([0-9a-f]{64})$")


class AuthFailure(Exception):
    """A peer request that must be refused. ``reason`` is one of ``REASONS``."""

    REASONS = ("missing", "malformed", "bad_signature", "stale", "replayed", "overloaded")

    def __init__(self, reason: str, message: str) -> None:
        assert reason in self.REASONS
        super().__init__(message)
        self.reason = reason
        self.message = message


def canonical_request(method: str, path_qs: str, date: str, nonce: str,
                      headers: Mapping[str, str]) -> bytes:
    """The exact bytes the MAC covers (see the module docstring)."""
    lines = ["p2preg-p2p-v1", method.upper(), path_qs, date, nonce]
    lines.extend(f"{name.lower()}:{headers.get(name, '')}" for name in SIGNED_HEADERS)
    return "\n".join(lines).encode()


class RequestSigner:
    """Signs outgoing peer requests with the keyring's primary key."""

    def __init__(self, keyring: Keyring, *, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self._keyring = keyring
        self._clock = clock or WallClock()
        self._rng = rng or random.SystemRandom()

    def sign(self, method: str, path_qs: str, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers to add to a request that will carry ``headers``."""
        date = f"{self._clock.now():.3f}"
        nonce = self._rng.getrandbits(128).to_bytes(16, "big").hex()
        mac = self._keyring.sign(canonical_request(method, path_qs, date, nonce, headers))
        return {DATE_HEADER: date, NONCE_HEADER: nonce,
                SIGNATURE_HEADER: f"{SIGNATURE_SCHEME}={mac.hex()}"}


@dataclass(frozen=True, slots=True)
class Verified:
    """A request that passed: who sent it (the signed ``P2preg-Node``, may be empty)."""

    node: str


class RequestVerifier:
    """Checks signed peer requests: signature, clock skew, replay (see the module docstring)."""

    def __init__(self, keyring: Keyring, *, clock: Clock | None = None,
                 max_skew_s: float = DEFAULT_MAX_SKEW_S,
                 max_nonces: int = DEFAULT_MAX_NONCES) -> None:
        self._keyring = keyring
        self._clock = clock or WallClock()
        self.max_skew_s = max_skew_s
        self.max_nonces = max_nonces
        self._seen: dict[str, float] = {}  # nonce -> time it may be forgotten
        self._expiry: list[tuple[float, str]] = []

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str]) -> Verified:
        """Return who sent the request, or raise ``AuthFailure``."""
        date = headers.get(DATE_HEADER)
        nonce = headers.get(NONCE_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if date is None or nonce is None or signature is None:
            raise AuthFailure("missing", "peer requests must be signed with the cluster key "
                              f"({DATE_HEADER}, {NONCE_HEADER}, {SIGNATURE_HEADER})")
        match = _SIGNATURE_RE.match(signature)
        if match is None or _NONCE_RE.match(nonce) is None:
            raise AuthFailure("malformed", "malformed peer request signature or nonce")
        try:
            stamp = float(date)
        except ValueError:
            raise AuthFailure("malformed", f"malformed {DATE_HEADER}") from None
        if stamp != stamp or stamp in (float("inf"), float("-inf")):
            raise AuthFailure("malformed", f"malformed {DATE_HEADER}")
        mac = bytes.fromhex(match.group(1))
        if not self._keyring.verify(canonical_request(method, path_qs, date, nonce, headers),
                                    mac):
            raise AuthFailure("bad_signature", "peer request signature does not verify with "
                              "any cluster key")
        now = self._clock.now()
        if abs(now - stamp) > self.max_skew_s:
            raise AuthFailure("stale", f"peer request is {now - stamp:+.1f}s off this node's "
                              f"clock (allowed: {self.max_skew_s:g}s)")
        self._forget_expired(now)
        if nonce in self._seen:
            raise AuthFailure("replayed", "peer request nonce was already used")
        if len(self._seen) >= self.max_nonces:
            raise AuthFailure("overloaded", "too many peer requests in the replay window")
        forget_at = stamp + self.max_skew_s
        self._seen[nonce] = forget_at
        heapq.heappush(self._expiry, (forget_at, nonce))
        return Verified(node=headers.get(NODE_HEADER, ""))

    @property
    def remembered_nonces(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, nonce = heapq.heappop(self._expiry)
            self._seen.pop(nonce, None)
