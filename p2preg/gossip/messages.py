"""Message bodies of the gossip protocol: typed records, their msgpack shape and validation.

Every body is a msgpack array (compact, positional). ``parse(type, body)`` turns an untrusted
decoded body into a record or None; it never raises. Field limits below keep a hostile packet from
planting huge strings. Owns: the record types and the push-pull message shapes. Must not import
asyncio, sockets, or other p2preg modules except ``p2preg.oci.digest`` (pure) and gossip.wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from p2preg.gossip.wire import MessageType, pack_body
from p2preg.oci.digest import is_digest

MAX_NAME = 128
MAX_HOST = 255
MAX_HTTP = 300
MAX_ZONE = 64
MAX_META_ITEMS = 16
MAX_META_VALUE = 128
MAX_U64 = 2**63 - 1
MAX_COORD_LEN = 40
LOAD_KEY = ""
"""Catalog key under which a node advertises its load (a float) instead of a digest state."""

STATE_DROPPED, STATE_HAVE, STATE_FETCHING = 0, 1, 2
STATE_NAMES: dict[int, str | None] = {
    STATE_DROPPED: None,
    STATE_HAVE: "have",
    STATE_FETCHING: "fetching",
}

STATUS_CODES = ("alive", "suspect", "dead", "left")

PP_REQUEST, PP_REPLY, PP_FINAL = 0, 1, 2


def _u64(x: Any) -> bool:
    return type(x) is int and 0 <= x <= MAX_U64


def _str(x: Any, limit: int, *, empty: bool = True) -> bool:
    return type(x) is str and len(x) <= limit and (empty or len(x) > 0)


def _name(x: Any) -> bool:
    return type(x) is str and 0 < len(x) <= MAX_NAME


def _port(x: Any) -> bool:
    return type(x) is int and 0 <= x <= 65535


def _meta(x: Any) -> bool:
    return (
        type(x) is dict
        and len(x) <= MAX_META_ITEMS
        and all(_str(k, MAX_NAME) and _str(v, MAX_META_VALUE) for k, v in x.items())
    )


def _finite(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    source: str

    def encode(self) -> bytes:
        return pack_body([self.seq, self.target, self.source])


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    host: str
    port: int
    want_nack: bool

    def encode(self) -> bytes:
        return pack_body([self.seq, self.target, self.host, self.port, self.want_nack])


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    coord: list[float] | None

    def encode(self) -> bytes:
        return pack_body([self.seq, self.coord])


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int

    def encode(self) -> bytes:
        return pack_body([self.seq])


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    name: str
    host: str
    port: int
    http: str
    zone: str
    meta: dict[str, str]

    def encode(self) -> bytes:
        return pack_body(
            [self.incarnation, self.name, self.host, self.port, self.http, self.zone, self.meta]
        )


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    name: str
    accuser: str

    def encode(self) -> bytes:
        return pack_body([self.incarnation, self.name, self.accuser])


@dataclass(frozen=True, slots=True)
class Dead:
    """``accuser == name`` means a graceful leave."""

    incarnation: int
    name: str
    accuser: str

    def encode(self) -> bytes:
        return pack_body([self.incarnation, self.name, self.accuser])


@dataclass(frozen=True, slots=True)
class CatalogDelta:
    """One versioned catalog entry of ``node``: a digest state code, or its load (LOAD_KEY)."""

    node: str
    generation: int
    version: int
    key: str
    value: float

    def encode(self) -> bytes:
        return pack_body([self.node, self.generation, self.version, self.key, self.value])


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | CatalogDelta


def valid_entry_value(key: Any, value: Any) -> bool:
    """A catalog entry is a digest with a state code, or LOAD_KEY with a finite load >= 0."""
    if key == LOAD_KEY:
        return _finite(value) and value >= 0
    return (
        type(key) is str
        and len(key) <= 200
        and type(value) is int
        and value in STATE_NAMES
        and is_digest(key)
    )


def parse(mtype: int, b: Any) -> Message | None:
    """Validate an untrusted decoded body; None when it does not match the type's schema."""
    if type(b) is not list:
        return None
    n = len(b)
    if mtype == MessageType.PING:
        if n == 3 and _u64(b[0]) and _name(b[1]) and _name(b[2]):
            return Ping(b[0], b[1], b[2])
    elif mtype == MessageType.ACK:
        if n == 2 and _u64(b[0]):
            c = b[1]
            if c is None:
                return Ack(b[0], None)
            if type(c) is list and 4 <= len(c) <= MAX_COORD_LEN and all(_finite(v) for v in c):
                return Ack(b[0], [float(v) for v in c])
    elif mtype == MessageType.ALIVE:
        if (
            n == 7
            and _u64(b[0])
            and _name(b[1])
            and _str(b[2], MAX_HOST, empty=False)
            and _port(b[3])
            and _str(b[4], MAX_HTTP)
            and _str(b[5], MAX_ZONE)
            and _meta(b[6])
        ):
            return Alive(b[0], b[1], b[2], b[3], b[4], b[5], b[6])
    elif mtype == MessageType.SUSPECT:
        if n == 3 and _u64(b[0]) and _name(b[1]) and _name(b[2]):
            return Suspect(b[0], b[1], b[2])
    elif mtype == MessageType.DEAD:
        if n == 3 and _u64(b[0]) and _name(b[1]) and _name(b[2]):
            return Dead(b[0], b[1], b[2])
    elif mtype == MessageType.CATALOG:
        if n == 5 and _name(b[0]) and _u64(b[1]) and _u64(b[2]) and valid_entry_value(b[3], b[4]):
            return CatalogDelta(b[0], b[1], b[2], b[3], b[4])
    elif mtype == MessageType.INDIRECT_PING:
        if (
            n == 5
            and _u64(b[0])
            and _name(b[1])
            and _str(b[2], MAX_HOST, empty=False)
            and _port(b[3])
            and type(b[4]) is bool
        ):
            return IndirectPing(b[0], b[1], b[2], b[3], b[4])
    elif mtype == MessageType.NACK and n == 1 and _u64(b[0]):
        return Nack(b[0])
    return None


# --- push-pull (stream) messages ------------------------------------------------------------

MemberRow = list[Any]
"""``[name, host, port, http, zone, meta, incarnation, status_code]``."""
VersionRow = list[Any]
"""``[node, generation, watermark]``."""
EntriesRow = list[Any]
"""``[node, generation, watermark, [[version, key, value], ...]]`` (incremental: the entries above
the receiver's watermark), or ``[node, generation, watermark, rows, floor]`` with ``0 < floor <=
watermark``: the sender's full state of ``node``, whose tombstones up to ``floor`` were collected.
A missing floor (the previous format) means 0."""


def valid_member_row(r: Any) -> bool:
    return (
        type(r) is list
        and len(r) == 8
        and _name(r[0])
        and _str(r[1], MAX_HOST, empty=False)
        and _port(r[2])
        and _str(r[3], MAX_HTTP)
        and _str(r[4], MAX_ZONE)
        and _meta(r[5])
        and _u64(r[6])
        and type(r[7]) is int
        and 0 <= r[7] < len(STATUS_CODES)
    )


MAX_EXTRA_FIELDS = 8
"""Trailing fields a newer peer may append to a push-pull row or message; ignored here."""


def _arity(r: list[Any], n: int) -> bool:
    return n <= len(r) <= n + MAX_EXTRA_FIELDS


def valid_version_row(r: Any) -> bool:
    return type(r) is list and _arity(r, 3) and _name(r[0]) and _u64(r[1]) and _u64(r[2])


def valid_entries_row(r: Any) -> bool:
    if not (
        type(r) is list
        and _arity(r, 4)
        and _name(r[0])
        and _u64(r[1])
        and _u64(r[2])
        and type(r[3]) is list
    ):
        return False
    if len(r) > 4 and not (_u64(r[4]) and r[4] <= r[2]):
        return False  # a floor above the watermark would break the receiver's invariant
    return all(
        type(e) is list and len(e) == 3 and _u64(e[0]) and valid_entry_value(e[1], e[2])
        for e in r[3]
    )


def _all(rows: Any, check: Any) -> bool:
    return type(rows) is list and all(check(r) for r in rows)


def parse_push_pull(msg: Any) -> list[Any] | None:
    """Validate an untrusted push-pull message; returns it unchanged or None.

    Forward compatible: up to ``MAX_EXTRA_FIELDS`` trailing fields of a message or row (what a
    newer version may append) are accepted and ignored; a missing optional field (the entries
    block's floor) takes its default.
    """
    if type(msg) is not list or not msg or type(msg[0]) is not int:
        return None
    kind = msg[0]
    if kind == PP_REQUEST:
        ok = (
            _arity(msg, 4)
            and type(msg[1]) is bool
            and _all(msg[2], valid_member_row)
            and _all(msg[3], valid_version_row)
        )
    elif kind == PP_REPLY:
        ok = (
            _arity(msg, 4)
            and _all(msg[1], valid_member_row)
            and _all(msg[2], valid_version_row)
            and _all(msg[3], valid_entries_row)
        )
    elif kind == PP_FINAL:
        ok = _arity(msg, 2) and _all(msg[1], valid_entries_row)
    else:
        ok = False
    return msg if ok else None
