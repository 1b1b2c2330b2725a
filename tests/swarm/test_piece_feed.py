"""``PieceFeed``: bytes handed on as they arrive; a failed or stalled source aborts readers."""

from __future__ import annotations

import asyncio

import pytest

from p2preg.pull.piece_feed import PieceFeed


async def _read(feed: PieceFeed, offset: int, end: int) -> bytes:
    return b"".join([c async for c in feed.follow(offset, end)])


async def test_a_reader_gets_every_byte_of_its_span_as_it_arrives() -> None:
    feed = PieceFeed("src", 100, 110)
    reader = asyncio.ensure_future(_read(feed, 103, 110))
    feed.add(b"abcd")
    await asyncio.sleep(0)
    assert not reader.done()
    feed.add(b"efg")
    feed.add(b"hij")
    feed.finish(True)
    assert await reader == b"defghij"
    assert feed.done and feed.data() == b"abcdefghij"


async def test_a_reader_that_starts_late_gets_the_bytes_already_there() -> None:
    feed = PieceFeed("src", 0, 6)
    feed.add(b"abc")
    feed.add(b"def")
    feed.finish(True)
    assert await _read(feed, 0, 6) == b"abcdef"
    assert await _read(feed, 2, 4) == b"cd"


async def test_a_failed_source_aborts_the_reader_before_the_span_is_whole() -> None:
    feed = PieceFeed("src", 0, 10)
    feed.add(b"abc")
    got = []

    async def reader() -> None:
        async for chunk in feed.follow(0, 10):
            got.append(chunk)

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    feed.finish(True)  # not whole: counts as failed
    with pytest.raises(ConnectionAbortedError):
        await task
    assert feed.failed and feed.data() is None and b"".join(got) == b"abc"


async def test_a_stalled_source_aborts_the_reader() -> None:
    feed = PieceFeed("src", 0, 10, stall_s=0.01)
    with pytest.raises(ConnectionAbortedError, match="stalled"):
        await _read(feed, 0, 10)


async def test_first_byte_waits_at_most_its_timeout() -> None:
    feed = PieceFeed("src", 0, 10)
    assert not await feed.first_byte(0.01)
    waiter = asyncio.ensure_future(feed.first_byte(5))
    await asyncio.sleep(0)
    feed.add(b"a")
    assert await waiter
    failed = PieceFeed("src", 0, 10)
    failed.finish(False)
    assert not await failed.first_byte(5)


def test_more_bytes_than_the_span_are_refused() -> None:
    feed = PieceFeed("src", 0, 2)
    with pytest.raises(ValueError):
        feed.add(b"abc")
    with pytest.raises(ValueError):
        PieceFeed("src", 5, 4)
