"""HTTP byte ranges for the registry: blob ``Range`` requests and upload ``Content-Range`` chunks.

Owns: ``RangeSpec`` (what a client asked for, before the size is known), ``ByteRange`` (an
inclusive, resolved ``start-end``), ``parse_range_header``, ``resolve_range``,
``parse_content_range`` and ``upload_range_header``. Pure functions; every bad input raises a
``RegistryError`` whose status the spec asks for (416 with ``Content-Range: bytes */size`` for an
unsatisfiable blob range). Must not import aiohttp or storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2preg.oci.errors import ErrorCode, RegistryError

# ASCII digits only: ``\d`` would take any Unicode digit (Arabic-Indic
# ``bytes=\u0661-\u0662``), and ``int()`` would happily parse it. Whitespace is spaces and
# tabs (RFC 9110's OWS), nothing else.
_RANGE_RE = re.compile(r"^[ \t]*bytes[ \t]*=[ \t]*([0-9]{0,19})[ \t]*-[ \t]*([0-9]{0,19})[ \t]*$",
                       re.IGNORECASE | re.ASCII)
# The spec's grammar is ``^[0-9]+-[0-9]+$``; the RFC 9110 form ``bytes N-M/*`` is also accepted.
_CONTENT_RANGE_RE = re.compile(
    r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?$", re.ASCII
)


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One requested byte range: ``start-end``, ``start-`` (``end`` None) or ``-suffix``."""

    start: int | None
    end: int | None
    suffix: int | None = None


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``start..end`` inside a blob of ``total`` bytes."""

    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.total}"


def parse_range_header(value: str | None) -> RangeSpec | None:
    """Parse a ``Range`` request header; None when absent.

    Only one ``bytes`` range is supported: several ranges, other units or garbage raise
    ``RANGE_INVALID`` (416), like an unsatisfiable range.
    """
    if value is None:
        return None
    match = _RANGE_RE.match(value)
    if match is None:
        raise RegistryError(
            ErrorCode.RANGE_INVALID,
            "only a single 'bytes=start-end' range is supported",
            {"range": value},
        )
    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise RegistryError(ErrorCode.RANGE_INVALID, "empty byte range", {"range": value})
    if not first:
        return RangeSpec(start=None, end=None, suffix=int(last))
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        raise RegistryError(ErrorCode.RANGE_INVALID, "range end before start", {"range": value})
    return RangeSpec(start=start, end=end)


def resolve_range(spec: RangeSpec, total: int) -> ByteRange:
    """Resolve ``spec`` against a blob of ``total`` bytes, or raise 416 with ``bytes */total``."""
    if spec.suffix is not None:
        if spec.suffix == 0 or total == 0:
            raise unsatisfiable(total)
        return ByteRange(max(0, total - spec.suffix), total - 1, total)
    assert spec.start is not None
    if spec.start >= total:
        raise unsatisfiable(total)
    end = total - 1 if spec.end is None else min(spec.end, total - 1)
    return ByteRange(spec.start, end, total)


def unsatisfiable(total: int) -> RegistryError:
    return RegistryError(
        ErrorCode.RANGE_INVALID,
        "requested range not satisfiable",
        {"size": total},
        headers={"Content-Range": f"bytes */{total}"},
    )


def parse_content_range(value: str) -> tuple[int, int]:
    """Parse an upload chunk's ``Content-Range`` (inclusive ``start-end``).

    Malformed values and ``end < start`` raise ``BLOB_UPLOAD_INVALID`` (400).
    """
    match = _CONTENT_RANGE_RE.match(value.strip())
    if match is None:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            "Content-Range must be '<start>-<end>'",
            {"content_range": value},
        )
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            "Content-Range end is before its start",
            {"content_range": value},
        )
    return start, end


def upload_range_header(offset: int) -> str:
    """The ``Range`` header of an upload session holding ``offset`` bytes.

    ``0-<offset-1>``; an empty session answers ``0-0`` as CNCF Distribution does (clients use
    the header only to find where to resume, and the spec has no form for "nothing yet").
    """
    return f"0-{max(offset - 1, 0)}"
