"""Specification of ``p2preg.registry.ranges``: Range and Content-Range parsing."""

from __future__ import annotations

import pytest

from p2preg.oci.errors import ErrorCode, RegistryError
from p2preg.registry.ranges import (
    ByteRange,
    RangeSpec,
    parse_content_range,
    parse_range_header,
    resolve_range,
    upload_range_header,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, ByteRange(0, 0, 10)),
        ("bytes=2-5", 10, ByteRange(2, 5, 10)),
        ("bytes=2-", 10, ByteRange(2, 9, 10)),
        ("bytes=5-100", 10, ByteRange(5, 9, 10)),
        ("bytes=-3", 10, ByteRange(7, 9, 10)),
        ("bytes=-30", 10, ByteRange(0, 9, 10)),
        ("BYTES = 1 - 2", 10, ByteRange(1, 2, 10)),
    ],
)
def test_a_single_range_resolves_against_the_size(
    header: str, size: int, expected: ByteRange
) -> None:
    spec = parse_range_header(header)
    assert spec is not None
    assert resolve_range(spec, size) == expected


def test_no_header_means_no_range() -> None:
    assert parse_range_header(None) is None


@pytest.mark.parametrize(
    "header", ["bytes=", "bytes=-", "bytes=5-2", "bytes=0-1,3-4", "items=0-1", "0-1", "bytes=a-b"]
)
def test_malformed_or_multiple_ranges_are_range_invalid(header: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_range_header(header)
    assert info.value.code is ErrorCode.RANGE_INVALID
    assert info.value.status == 416


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (RangeSpec(10, None), 10),
        (RangeSpec(11, 20), 10),
        (RangeSpec(None, None, 0), 10),
        (RangeSpec(0, 0), 0),
        (RangeSpec(None, None, 5), 0),
    ],
)
def test_unsatisfiable_ranges_are_416_with_the_size(spec: RangeSpec, size: int) -> None:
    with pytest.raises(RegistryError) as info:
        resolve_range(spec, size)
    assert info.value.status == 416
    assert info.value.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0-9", (0, 9)), ("10-10", (10, 10)), ("bytes 0-9/10", (0, 9)), ("bytes=3-4/*", (3, 4))],
)
def test_content_range_of_a_chunk(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "5", "-5", "a-b", "9-0", "0-9-10", "0 - 9"])
def test_malformed_content_range_is_blob_upload_invalid(header: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_content_range(header)
    assert info.value.code is ErrorCode.BLOB_UPLOAD_INVALID
    assert info.value.status == 400


def test_upload_range_header_is_inclusive_and_zero_for_an_empty_session() -> None:
    assert upload_range_header(0) == "0-0"
    assert upload_range_header(1) == "0-0"
    assert upload_range_header(10) == "0-9"


@pytest.mark.parametrize(
    "header",
    ["bytes=\u0661-\u0662", "bytes=\uff10-\uff15", "bytes=0-\u0665", "bytes=-\u0661",
     "bytes=\u00b9-2", "bytes=0-1\u00a0", "bytes\u2003=0-1"],
)
def test_only_ascii_digits_and_spaces_make_a_range(header: str) -> None:
    assert int("\u0661") == 1  # what a \d-based parser would have accepted
    with pytest.raises(RegistryError) as caught:
        parse_range_header(header)
    assert caught.value.code is ErrorCode.RANGE_INVALID
    assert caught.value.status == 416


@pytest.mark.parametrize("header", ["\u0661-\u0662", "0-\uff15", "bytes \u0660-1/*"])
def test_only_ascii_digits_make_a_content_range(header: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_content_range(header)
    assert caught.value.code is ErrorCode.BLOB_UPLOAD_INVALID
