"""The gossip wire format: framing, MACs, size caps and the drop counters.

Packet layout (UDP, and the payload of every TCP stream frame)::

    +---------+------+------------------+----------------------------+
    | version | type | msgpack body     | HMAC-SHA256 (32 bytes)     |
    | 1 byte  | 1 B  | (type-specific)  | only when a key is set     |
    +---------+------+------------------+----------------------------+

``type`` is append-only (``MessageType``); ``COMPOUND`` carries ``[[type, body], ...]``. The MAC
covers every byte before it and is made with the keyring's primary key; any key of the keyring
verifies, so keys rotate without downtime (add everywhere, switch primary, remove old). A TCP
stream frame is a 4-byte big-endian length followed by one packet.

Decoding never raises: a bad packet yields ``None`` and bumps ``DropCounters`` by reason.
Owns: ``PROTOCOL_VERSION``, ``MessageType``, ``DropReason``, ``Keyring`` (and ``parse_key``: the
key-file formats, hex or base64), ``DropCounters``, ``assemble_packet``, ``decode_packet``,
``encode_stream_frame``, ``StreamDecoder``.
Must not import asyncio, sockets, or other p2preg modules.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
"""The version this code speaks and writes."""
MIN_PROTOCOL_VERSION = 1
"""The oldest version this code still accepts."""
MAC_BYTES = 32
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64
GENERATED_KEY_BYTES = 32
"""What ``p2preg cluster-key`` makes."""
_HEX_KEY = re.compile(r"[0-9a-fA-F]+")
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
STREAM_HEADER = struct.Struct(">I")


class MessageType(enum.IntEnum):
    """Append-only message types: never renumber, never reuse a retired number."""

    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    CATALOG = 8
    COMPOUND = 9
    PUSH_PULL = 64
    """Stream-only: one leg of a push-pull anti-entropy exchange."""


DATAGRAM_TYPES = frozenset(
    {
        MessageType.PING,
        MessageType.INDIRECT_PING,
        MessageType.ACK,
        MessageType.NACK,
        MessageType.ALIVE,
        MessageType.SUSPECT,
        MessageType.DEAD,
        MessageType.CATALOG,
    }
)


class DropReason(enum.StrEnum):
    """Why a packet or stream frame was dropped."""

    OVERSIZED = "oversized"
    TRUNCATED = "truncated"
    UNAUTHENTICATED = "unauthenticated"
    OLD_VERSION = "old_version"
    NEW_VERSION = "new_version"
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED = "malformed"


class DropCounters:
    """Counts of dropped packets by reason; ``total`` is their sum."""

    __slots__ = ("by_reason",)

    def __init__(self) -> None:
        self.by_reason: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    def count(self, reason: DropReason) -> None:
        self.by_reason[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict[str, int]:
        return {reason.value: n for reason, n in self.by_reason.items()}


class KeyringError(ValueError):
    """A key of the wrong size, or an empty keyring (local misconfiguration)."""


def parse_key(text: str) -> bytes:
    """One cluster key: hex (``p2preg cluster-key`` prints 32 random bytes as 64 hex digits) or
    standard/URL-safe base64 (what ``head -c 32 /dev/urandom | base64`` prints). Hex is tried
    first: an even-length run of hex digits is hex. The key must be MIN..MAX_KEY_BYTES long.
    Raises ``KeyringError`` without echoing the key (it is a secret)."""
    value = text.strip()
    key: bytes | None = None
    if len(value) % 2 == 0 and _HEX_KEY.fullmatch(value):
        key = bytes.fromhex(value)
    elif _BASE64_KEY.fullmatch(value):
        padded = value + "=" * (-len(value) % 4)
        try:
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None:
        raise KeyringError(
            f"cluster key is neither hex nor base64 ({len(value)} characters); make one with "
            "`p2preg cluster-key`"
        )
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise KeyringError(
            f"cluster keys must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {len(key)}"
        )
    return key


class Keyring:
    """Cluster keys: the primary (first) key signs, every key verifies."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        for key in keys:
            if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
                raise KeyringError(
                    f"cluster keys must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {len(key)}"
                )
        self._keys: tuple[bytes, ...] = tuple(keys)

    @classmethod
    def from_text(cls, text: str) -> Keyring:
        """Parse a key file: one key per line (``parse_key``), the first is primary; ``#`` starts
        a comment. Errors name the line, never the key."""
        keys: list[bytes] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                keys.append(parse_key(line))
            except KeyringError as exc:
                raise KeyringError(f"line {number}: {exc}") from None
        return cls(keys)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._keys

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self._keys[0], data, hashlib.sha256)

    def verify(self, data: bytes, mac: bytes) -> bool:
        return any(
            hmac.compare_digest(hmac.digest(key, data, hashlib.sha256), mac) for key in self._keys
        )


def pack_body(body: Any) -> bytes:
    """msgpack-encode one message body (floats as 32-bit: coordinates need no more)."""
    return msgpack.packb(body, use_bin_type=True, use_single_float=True)  # type: ignore[no-any-return]


def packet_overhead(keyring: Keyring | None) -> int:
    """Bytes a compound packet adds around its parts: header, array header, MAC."""
    return 2 + 5 + (MAC_BYTES if keyring is not None else 0)


PART_OVERHEAD = 2
"""Bytes each part adds inside a compound packet: a 2-array header and the type fixint."""


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def assemble_packet(parts: Sequence[tuple[int, bytes]], keyring: Keyring | None) -> bytes:
    """Build one packet from pre-encoded ``(type, body_bytes)`` parts (compound if several)."""
    if len(parts) == 1:
        mtype, body = parts[0]
        data = bytes((PROTOCOL_VERSION, mtype)) + body
    else:
        chunks = [bytes((PROTOCOL_VERSION, MessageType.COMPOUND)), _array_header(len(parts))]
        for mtype, body in parts:
            chunks.append(bytes((0x92, mtype)))
            chunks.append(body)
        data = b"".join(chunks)
    if keyring is not None:
        data += keyring.sign(data)
    return data


def _unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)


def _open(
    data: bytes, keyring: Keyring | None, counters: DropCounters, allowed: frozenset[int]
) -> tuple[int, Any] | None:
    """Check MAC, version and type; return ``(type, decoded body)`` or None (counted)."""
    min_len = 3 + (MAC_BYTES if keyring is not None else 0)
    if len(data) < min_len:
        counters.count(DropReason.TRUNCATED)
        return None
    if keyring is not None:
        signed, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
        if not keyring.verify(signed, mac):
            counters.count(DropReason.UNAUTHENTICATED)
            return None
        data = signed
    version, mtype = data[0], data[1]
    if version < MIN_PROTOCOL_VERSION:
        counters.count(DropReason.OLD_VERSION)
        return None
    if version > PROTOCOL_VERSION:
        counters.count(DropReason.NEW_VERSION)
        return None
    if mtype not in allowed:
        counters.count(DropReason.UNKNOWN_TYPE)
        return None
    try:
        body = _unpack(data[2:])
    except Exception:  # untrusted bytes: msgpack raises many types; all mean "malformed"
        counters.count(DropReason.MALFORMED)
        return None
    return mtype, body


_DATAGRAM_OR_COMPOUND = DATAGRAM_TYPES | {MessageType.COMPOUND}
_STREAM_TYPES = frozenset({MessageType.PUSH_PULL})


def decode_packet(
    data: bytes, keyring: Keyring | None, counters: DropCounters, max_bytes: int
) -> list[tuple[int, Any]] | None:
    """Decode a UDP packet into ``[(type, body), ...]``; None if dropped (and counted).

    Bodies are only msgpack-decoded here; their schema is checked by ``messages.parse``.
    """
    if len(data) > max_bytes:
        counters.count(DropReason.OVERSIZED)
        return None
    opened = _open(data, keyring, counters, _DATAGRAM_OR_COMPOUND)
    if opened is None:
        return None
    mtype, body = opened
    if mtype != MessageType.COMPOUND:
        return [(mtype, body)]
    if not isinstance(body, list) or not body:
        counters.count(DropReason.MALFORMED)
        return None
    out: list[tuple[int, Any]] = []
    for part in body:
        if not (isinstance(part, list) and len(part) == 2 and isinstance(part[0], int)):
            counters.count(DropReason.MALFORMED)
            return None
        if part[0] not in DATAGRAM_TYPES:
            counters.count(DropReason.UNKNOWN_TYPE)
            return None
        out.append((part[0], part[1]))
    return out


def encode_stream_frame(message: Any, keyring: Keyring | None) -> bytes:
    """Frame one push-pull message for a TCP stream: 4-byte length + packet."""
    packet = assemble_packet([(MessageType.PUSH_PULL, pack_body(message))], keyring)
    return STREAM_HEADER.pack(len(packet)) + packet


class StreamDecoder:
    """Sans-I/O reader of push-pull stream frames: ``feed`` bytes, get whole messages.

    After the first bad frame ``failed`` holds the reason and every later ``feed`` returns
    nothing: the driver must close the connection.
    """

    __slots__ = ("_buffer", "_counters", "_keyring", "_max_frame_bytes", "failed")

    def __init__(
        self, keyring: Keyring | None, counters: DropCounters, max_frame_bytes: int
    ) -> None:
        self._keyring = keyring
        self._counters = counters
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self.failed: DropReason | None = None

    def feed(self, data: bytes) -> list[Any]:
        if self.failed is not None:
            return []
        self._buffer += data
        out: list[Any] = []
        while len(self._buffer) >= STREAM_HEADER.size:
            (length,) = STREAM_HEADER.unpack_from(self._buffer)
            if length > self._max_frame_bytes:
                self._fail(DropReason.OVERSIZED)
                return out
            end = STREAM_HEADER.size + length
            if len(self._buffer) < end:
                break
            packet = bytes(self._buffer[STREAM_HEADER.size : end])
            del self._buffer[:end]
            opened = _open(packet, self._keyring, self._counters, _STREAM_TYPES)
            if opened is None:
                self.failed = DropReason.MALFORMED
                self._buffer.clear()
                return out
            out.append(opened[1])
        return out

    def _fail(self, reason: DropReason) -> None:
        self._counters.count(reason)
        self.failed = reason
        self._buffer.clear()
