"""The piece layout of a blob and the availability a node reports for it.

Owns: ``piece_bytes`` (the one function every node uses to cut a blob of a given size into
pieces, so all agree without negotiating), ``Layout`` (piece spans of one blob), ``Have`` (the
pieces a node holds for one fill: a contiguous prefix plus a set of buffered pieces) and the
wire form of the swarm's headers (``P2preg-Have``, ``P2preg-Hint``; names below).

Rules:
- ``piece_bytes(size)`` is a power of two close to ``size / TARGET_PIECES``, clamped to
  [``MIN_PIECE_BYTES``, ``MAX_PIECE_BYTES``]. Piece ``i`` is bytes
  ``[i * P, min((i + 1) * P, size))``; an empty blob has no pieces.
- ``P2preg-Have: <prefix>[;i,j,k]``: the node holds pieces ``[0, prefix)`` and the listed
  indices (each above the prefix, at most ``MAX_HAVE_EXTRA`` of them). A holder of the whole
  blob says ``<count>``. ``P2preg-Blob-Size`` carries the size when the node knows it.
- ``P2preg-Hint: name1,name2``: peers that have (or are receiving) the piece asked for; at
  most ``MAX_HINTS`` names, each a plain token.
- ``P2preg-Load: <n>``: the piece uploads the answering node runs at that moment (every piece
  answer: ``206``, ``503``, ``404``); askers prefer the least loaded source.
- ``P2preg-Join: 1`` (a fill's request to the digest's owner; ``complete`` when the asker
  holds the whole blob) asks the owner's tracker (``swarm.tracker``) for parents; the answer
  says ``P2preg-Parents: <stripe>=<name>,...`` (names as in ``P2preg-Hint``, at most
  ``MAX_STRIPES`` stripes). ``P2preg-Lost: <stripe>=<name>,...`` on a join: parents the fill
  lost. ``P2preg-Child: 1`` on a piece request: the asker is the peer's assigned child in that
  piece's stripe (it is served past the piece cap and the slots, and waits for a piece the
  peer will get).
- Decoding refuses anything malformed or out of range with ``ValueError`` (the caller ignores
  the header then: availability is advice, the digest protects the bytes).

Pure: must not import asyncio, aiohttp or anything of the node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MIN_PIECE_BYTES = 256 << 10
MAX_PIECE_BYTES = 8 << 20
#: 16 (a 16 MiB blob in 1 MiB pieces): measured on the lab (N=16, update, cut-through) against
#: 8 and 32, and 256 before (every piece a request through Python on a loaded machine).
TARGET_PIECES = 16
#: A non-owner that does not know the size yet asks for this many bytes first.
FIRST_REQUEST_BYTES = MIN_PIECE_BYTES
MAX_HAVE_EXTRA = 1024
MAX_HINTS = 8

#: Marks a peer request for one piece (a ``Range`` inside one piece's span).
SWARM_HEADER = "P2preg-Swarm"
HAVE_HEADER = "P2preg-Have"
SIZE_HEADER = "P2preg-Blob-Size"
BUSY_HEADER = "P2preg-Busy"
HINT_HEADER = "P2preg-Hint"
LOAD_HEADER = "P2preg-Load"
LAST_RESORT_HEADER = "P2preg-Last-Resort"
JOIN_HEADER = "P2preg-Join"
PARENTS_HEADER = "P2preg-Parents"
LOST_HEADER = "P2preg-Lost"
CHILD_HEADER = "P2preg-Child"
JOIN_COMPLETE = "complete"
MAX_STRIPES = 16
BUSY_PIECE = "piece"
BUSY_SLOTS = "slots"

_INT = re.compile(r"^[0-9]{1,12}$")
_NAME = re.compile(r"^[A-Za-z0-9._:@\[\]-]{1,128}$")


def piece_bytes(size: int) -> int:
    """The piece size of a blob of ``size`` bytes (module docstring)."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    target = max(1, size // TARGET_PIECES)
    p = 1 << (target.bit_length() - 1)  # the power of two at or below target
    if target - p > (p << 1) - target:  # the nearer of p and 2p
        p <<= 1
    return min(MAX_PIECE_BYTES, max(MIN_PIECE_BYTES, p))


@dataclass(frozen=True, slots=True)
class Layout:
    """How one blob is cut: ``size`` bytes in pieces of ``piece_bytes`` (the last one shorter)."""

    size: int
    piece_bytes: int

    @classmethod
    def for_size(cls, size: int) -> Layout:
        return cls(size, piece_bytes(size))

    @property
    def count(self) -> int:
        return -(-self.size // self.piece_bytes)

    def span(self, piece: int) -> tuple[int, int]:
        """``(start, end)`` byte offsets of ``piece``, end exclusive."""
        if not 0 <= piece < self.count:
            raise IndexError(f"piece {piece} of {self.count}")
        start = piece * self.piece_bytes
        return start, min(start + self.piece_bytes, self.size)

    def length(self, piece: int) -> int:
        start, end = self.span(piece)
        return end - start

    def piece_at(self, offset: int) -> int:
        """The piece that holds byte ``offset``."""
        if not 0 <= offset < self.size:
            raise IndexError(f"byte {offset} of {self.size}")
        return offset // self.piece_bytes

    def whole_pieces(self, nbytes: int) -> int:
        """How many pieces lie entirely within the first ``nbytes`` bytes."""
        if nbytes >= self.size:
            return self.count
        return max(0, nbytes) // self.piece_bytes

    def piece_of_span(self, start: int, end: int) -> int | None:
        """The piece whose span is exactly ``[start, end)``, else None."""
        if self.size == 0 or start % self.piece_bytes or not 0 <= start < self.size:
            return None
        piece = start // self.piece_bytes
        return piece if self.span(piece)[1] == end else None


@dataclass(frozen=True, slots=True)
class Have:
    """Pieces ``[0, prefix)`` plus ``extra`` (indices above the prefix)."""

    prefix: int = 0
    extra: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.prefix < 0 or any(i <= self.prefix - 1 or i < 0 for i in self.extra):
            raise ValueError("extra pieces must lie above the prefix")

    @classmethod
    def of(cls, prefix: int, extra: Iterable[int] = ()) -> Have:
        """A normalised ``Have``: extra pieces that extend the prefix are folded into it."""
        rest = {i for i in extra if i >= prefix}
        while prefix in rest:
            rest.discard(prefix)
            prefix += 1
        return cls(prefix, frozenset(rest))

    @classmethod
    def full(cls, layout: Layout) -> Have:
        return cls(layout.count)

    def has(self, piece: int) -> bool:
        return piece < self.prefix or piece in self.extra

    def count(self) -> int:
        return self.prefix + len(self.extra)

    def merge(self, other: Have) -> Have:
        """What is known from both (availability only grows during a fill)."""
        return Have.of(max(self.prefix, other.prefix), self.extra | other.extra)

    def encode(self) -> str:
        extra = sorted(self.extra)[:MAX_HAVE_EXTRA]
        return f"{self.prefix};{','.join(map(str, extra))}" if extra else str(self.prefix)

    @classmethod
    def decode(cls, value: str, count: int | None = None) -> Have:
        """Parse a ``P2preg-Have`` value; ``count`` (pieces of the blob) bounds the indices."""
        head, sep, tail = value.strip().partition(";")
        if not _INT.match(head):
            raise ValueError(f"bad have prefix {head!r}")
        prefix = int(head)
        items = [t.strip() for t in tail.split(",")] if sep and tail.strip() else []
        if len(items) > MAX_HAVE_EXTRA or not all(_INT.match(t) for t in items):
            raise ValueError("bad have piece list")
        extra = [int(t) for t in items]
        if count is not None and (prefix > count or any(i >= count for i in extra)):
            raise ValueError(f"have beyond the blob's {count} pieces")
        return cls.of(prefix, extra)


def encode_hints(names: Iterable[str]) -> str:
    return ",".join(list(dict.fromkeys(names))[:MAX_HINTS])


def decode_load(value: str) -> int:
    """Parse ``P2preg-Load`` (a count of uploads); ``ValueError`` if malformed."""
    value = value.strip()
    if not _INT.match(value):
        raise ValueError(f"bad load {value[:40]!r}")
    return int(value)


def decode_hints(value: str) -> tuple[str, ...]:
    """Parse ``P2preg-Hint``: the valid names, at most ``MAX_HINTS``; junk names dropped."""
    names = [t.strip() for t in value.split(",")]
    return tuple(dict.fromkeys(n for n in names if _NAME.match(n)))[:MAX_HINTS]


def stripe_of(piece: int, stripes: int) -> int:
    """The stripe piece ``piece`` belongs to (``swarm.tracker``)."""
    return piece % stripes


def encode_stripes(peers: dict[int, str]) -> str:
    """``P2preg-Parents`` / ``P2preg-Lost``: ``<stripe>=<name>,...`` in stripe order."""
    return ",".join(f"{s}={peers[s]}" for s in sorted(peers))


def decode_stripes(value: str) -> dict[int, str]:
    """Parse ``P2preg-Parents`` / ``P2preg-Lost``; ``ValueError`` if malformed."""
    out: dict[int, str] = {}
    for item in value.split(","):
        stripe, sep, name = item.strip().partition("=")
        if not sep or not _INT.match(stripe) or not _NAME.match(name) \
                or int(stripe) >= MAX_STRIPES or int(stripe) in out:
            raise ValueError(f"bad stripe list {value[:80]!r}")
        out[int(stripe)] = name
    return out
