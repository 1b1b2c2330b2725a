"""Wire format: framing, compound packets, MACs with a rotating keyring, drops counted by reason."""

from __future__ import annotations

import pytest

from p2preg.gossip.messages import Ping, Suspect, parse
from p2preg.gossip.wire import (
    MAC_BYTES,
    PROTOCOL_VERSION,
    DropCounters,
    DropReason,
    Keyring,
    KeyringError,
    MessageType,
    StreamDecoder,
    assemble_packet,
    decode_packet,
    encode_stream_frame,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
PING = (MessageType.PING, Ping(7, "b", "a").encode())
SUSPECT = (MessageType.SUSPECT, Suspect(3, "c", "a").encode())


def decode(data: bytes, keyring: Keyring | None = None) -> tuple[object, DropCounters]:
    counters = DropCounters()
    return decode_packet(data, keyring, counters, 1400), counters


def test_single_message_packet_is_version_type_body() -> None:
    packet = assemble_packet([PING], None)
    assert packet[0] == PROTOCOL_VERSION and packet[1] == MessageType.PING
    parts, counters = decode(packet)
    assert parts == [(MessageType.PING, [7, "b", "a"])]
    assert counters.total == 0


def test_compound_packet_carries_every_part_in_order() -> None:
    parts, _ = decode(assemble_packet([PING, SUSPECT], None))
    assert isinstance(parts, list)
    assert [parse(t, b) for t, b in parts] == [Ping(7, "b", "a"), Suspect(3, "c", "a")]


def test_signed_packet_verifies_with_any_key_of_the_ring() -> None:
    packet = assemble_packet([PING], Keyring([KEY_A]))
    assert len(packet) == len(assemble_packet([PING], None)) + MAC_BYTES
    # Rotation: the receiver already has the new key as primary and still accepts the old one.
    parts, counters = decode(packet, Keyring([KEY_B, KEY_A]))
    assert parts is not None and counters.total == 0


def test_packet_signed_with_unknown_key_is_dropped_as_unauthenticated() -> None:
    parts, counters = decode(assemble_packet([PING], Keyring([KEY_B])), Keyring([KEY_A]))
    assert parts is None
    assert counters.by_reason[DropReason.UNAUTHENTICATED] == 1


def test_unsigned_packet_is_dropped_when_a_key_is_set() -> None:
    parts, counters = decode(assemble_packet([PING], None) + b"x" * 40, Keyring([KEY_A]))
    assert parts is None and counters.by_reason[DropReason.UNAUTHENTICATED] == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01", DropReason.TRUNCATED),
        (b"\x01\x01" + b"\x90" * 1400, DropReason.OVERSIZED),
        (bytes([0, MessageType.PING]) + b"\x90", DropReason.OLD_VERSION),
        (bytes([PROTOCOL_VERSION + 1, MessageType.PING]) + b"\x90", DropReason.NEW_VERSION),
        (bytes([PROTOCOL_VERSION, 200]) + b"\x90", DropReason.UNKNOWN_TYPE),
        (bytes([PROTOCOL_VERSION, MessageType.PING]) + b"\xc1\xc1", DropReason.MALFORMED),
        (
            bytes([PROTOCOL_VERSION, MessageType.COMPOUND]) + b"\x91\x92\x7f\x90",
            DropReason.UNKNOWN_TYPE,
        ),
        (bytes([PROTOCOL_VERSION, MessageType.COMPOUND]) + b"\x91\x05", DropReason.MALFORMED),
        (bytes([PROTOCOL_VERSION, MessageType.PUSH_PULL]) + b"\x90", DropReason.UNKNOWN_TYPE),
    ],
)
def test_bad_packets_are_dropped_and_counted_by_reason(data: bytes, reason: DropReason) -> None:
    parts, counters = decode(data)
    assert parts is None
    assert counters.by_reason[reason] == 1 and counters.total == 1


def test_keyring_rejects_short_keys_and_parses_hex_files() -> None:
    with pytest.raises(KeyringError):
        Keyring([b"short"])
    with pytest.raises(KeyringError):
        Keyring([])
    ring = Keyring.from_text(f"# rotated 2026-11\n{KEY_B.hex()}\n\n{KEY_A.hex()}  # old\n")
    assert ring.keys == (KEY_B, KEY_A) and ring.primary == KEY_B


def test_stream_decoder_reassembles_frames_split_anywhere() -> None:
    ring = Keyring([KEY_A])
    data = encode_stream_frame([0, True, [], []], ring) + encode_stream_frame([2, []], ring)
    decoder = StreamDecoder(ring, DropCounters(), 1 << 20)
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [[0, True, [], []], [2, []]]
    assert decoder.failed is None


def test_stream_decoder_fails_on_oversized_length_without_buffering_it() -> None:
    counters = DropCounters()
    decoder = StreamDecoder(None, counters, 1024)
    assert decoder.feed((10_000_000).to_bytes(4, "big") + b"x") == []
    assert decoder.failed == DropReason.OVERSIZED
    assert decoder.feed(encode_stream_frame([2, []], None)) == []


def test_stream_decoder_fails_on_a_forged_frame() -> None:
    counters = DropCounters()
    decoder = StreamDecoder(Keyring([KEY_A]), counters, 1 << 20)
    assert decoder.feed(encode_stream_frame([2, []], Keyring([KEY_B]))) == []
    assert decoder.failed is not None
    assert counters.by_reason[DropReason.UNAUTHENTICATED] == 1
