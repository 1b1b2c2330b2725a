"""The piece layout and the wire form of availability and hints."""

from __future__ import annotations

import pytest

from p2preg.swarm.pieces import (
    MAX_HINTS,
    MAX_PIECE_BYTES,
    MIN_PIECE_BYTES,
    Have,
    Layout,
    decode_hints,
    encode_hints,
    piece_bytes,
)

MiB = 1 << 20


@pytest.mark.parametrize(("size", "expected"), [
    (0, MIN_PIECE_BYTES),
    (1, MIN_PIECE_BYTES),
    (4 * MiB, MIN_PIECE_BYTES),
    (16 * MiB, MiB),
    (32 * MiB, 2 * MiB),
    (64 * MiB, 4 * MiB),
    (256 * MiB, MAX_PIECE_BYTES),
    (1 << 30, MAX_PIECE_BYTES),
    (3 << 30, MAX_PIECE_BYTES),
    (100 << 30, MAX_PIECE_BYTES),
])
def test_piece_bytes_is_a_clamped_power_of_two_near_size_over_16(size: int,
                                                                   expected: int) -> None:
    assert piece_bytes(size) == expected


def test_piece_bytes_is_always_a_power_of_two() -> None:
    for size in range(0, 10 << 30, 77_777_777):
        p = piece_bytes(size)
        assert p & (p - 1) == 0 and MIN_PIECE_BYTES <= p <= MAX_PIECE_BYTES


def test_piece_bytes_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError):
        piece_bytes(-1)


def test_layout_spans_cover_the_blob_with_a_short_last_piece() -> None:
    layout = Layout(size=10, piece_bytes=4)
    assert layout.count == 3
    assert [layout.span(i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert layout.length(2) == 2
    assert layout.piece_at(9) == 2
    with pytest.raises(IndexError):
        layout.span(3)


def test_an_empty_blob_has_no_pieces() -> None:
    assert Layout.for_size(0).count == 0


def test_whole_pieces_and_piece_of_span() -> None:
    layout = Layout(size=10, piece_bytes=4)
    assert [layout.whole_pieces(n) for n in (0, 3, 4, 9, 10, 99)] == [0, 0, 1, 2, 3, 3]
    assert layout.piece_of_span(4, 8) == 1
    assert layout.piece_of_span(8, 10) == 2
    assert layout.piece_of_span(4, 7) is None
    assert layout.piece_of_span(3, 7) is None


def test_have_folds_extra_pieces_into_the_prefix() -> None:
    assert Have.of(2, [2, 3, 5]) == Have(4, frozenset({5}))
    assert Have.of(3, [1, 7]).extra == frozenset({7})


def test_have_round_trips_through_its_header() -> None:
    have = Have.of(12, [14, 15, 20])
    assert have.encode() == "12;14,15,20"
    assert Have.decode(have.encode()) == have
    assert Have.decode("7") == Have(7)
    assert Have.decode("0;") == Have(0)


@pytest.mark.parametrize("value", ["", "x", "-1", "3;a", "3;1,,2", "1" * 13, "3;-4"])
def test_have_refuses_malformed_headers(value: str) -> None:
    with pytest.raises(ValueError):
        Have.decode(value)


def test_have_refuses_pieces_beyond_the_blob() -> None:
    with pytest.raises(ValueError):
        Have.decode("5", count=4)
    with pytest.raises(ValueError):
        Have.decode("1;4", count=4)
    assert Have.decode("4", count=4) == Have(4)


def test_have_merge_keeps_what_both_say() -> None:
    assert Have.of(2, [5]).merge(Have.of(3, [7])) == Have(3, frozenset({5, 7}))
    assert Have.of(1).has(0) and not Have.of(1).has(1)


def test_hints_round_trip_and_drop_junk() -> None:
    assert decode_hints(encode_hints(["a", "b", "a"])) == ("a", "b")
    assert decode_hints("a, b c ,<x>,ok-1") == ("a", "ok-1")
    assert len(decode_hints(",".join(f"n{i}" for i in range(50)))) == MAX_HINTS
