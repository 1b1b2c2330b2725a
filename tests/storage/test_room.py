"""Room reservations before a fill: counted against the free bytes, made by the room maker when
short, refused (507) otherwise, and a refused digest stays refused for a short while."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2preg.oci.digest import Digest
from p2preg.storage.diskspace import InsufficientStorage
from p2preg.storage.room import RoomKeeper

A = Digest("sha256", "a" * 64)
B = Digest("sha256", "b" * 64)


class Writer:
    def __init__(self, size: int = 0) -> None:
        self.size = size


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.asked: list[int] = []

    def __call__(self, root: Path) -> int:
        return self.free

    async def make_room(self, wanted: int) -> int:
        self.asked.append(wanted)
        self.free += wanted
        return wanted


def keeper(disk: Disk, now: list[float]) -> RoomKeeper:
    return RoomKeeper(Path("/nowhere"), margin_bytes=10, refuse_for_s=30,
                      clock=lambda: now[0], free=disk)


async def test_reservations_of_writers_in_progress_count_against_the_free_bytes() -> None:
    disk, now = Disk(free=1000), [0.0]
    room = keeper(disk, now)
    first, second = Writer(), Writer()
    await room.reserve(first, A, 600)
    with pytest.raises(InsufficientStorage) as refused:
        await room.reserve(second, B, 600)  # 1000 free, 600 promised to the first
    assert refused.value.status == 507
    assert refused.value.needed_bytes == 610 and refused.value.detail["needed_bytes"] == 610
    first.size = 600  # the first one wrote its bytes: they are off the free count now
    disk.free = 400
    room.release(first)
    assert room.outstanding_bytes() == 0


async def test_the_room_maker_is_asked_for_the_shortfall() -> None:
    disk, now = Disk(free=100), [0.0]
    room = keeper(disk, now)
    room.room_maker = disk.make_room
    await room.reserve(Writer(size=50), A, 500)  # needs 450 + 10 margin, 100 free
    assert disk.asked == [360]


async def test_a_refused_digest_is_refused_at_once_until_the_time_is_up() -> None:
    disk, now = Disk(free=100), [0.0]
    room = keeper(disk, now)
    with pytest.raises(InsufficientStorage):
        await room.reserve(Writer(), A, 500)
    now[0] = 29.0
    with pytest.raises(InsufficientStorage, match="did not fit"):
        room.check(A)
    room.check(B)  # other digests are not affected
    now[0] = 30.0
    room.check(A)  # tried again after refuse_for_s
    assert room.refused_total == 2
