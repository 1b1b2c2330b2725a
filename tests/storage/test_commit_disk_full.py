"""A disk that fills up at a blob's commit (no inode left for its link or its directory) refuses
the digest exactly as a full disk during the writes does: ``507``, nothing committed, the temp
file removed, the refusal counted and kept for a while. The disk is a small tmpfs with few inodes
(root only): every file, directory and hard link there takes one."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from p2preg.oci.digest import Digest
from p2preg.oci.errors import RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.diskspace import INSUFFICIENT_STORAGE
from p2preg.storage.layout import StoreLayout
from tests.support.smallfs import inodes_used_up, small_tmpfs

FS_BYTES = 8 * 1024 * 1024
FS_INODES = 64


def same_prefix_pair(rng: random.Random) -> tuple[bytes, bytes]:
    """Two blobs whose digests share their directory (``<hex[:2]>``)."""
    first = rng.randbytes(1000)
    prefix = Digest.of_bytes(first).hex[:2]
    while True:
        second = rng.randbytes(100_000)
        if Digest.of_bytes(second).hex[:2] == prefix:
            return first, second


@pytest.mark.parametrize("directory_exists", [False, True], ids=["mkdir", "link"])
async def test_a_commit_on_a_full_disk_refuses_the_digest_like_a_full_write(
    tmp_path: Path, directory_exists: bool
) -> None:
    rng = random.Random(20261207)
    neighbour, data = same_prefix_pair(rng)
    digest = Digest.of_bytes(data)
    with small_tmpfs(tmp_path / "fs", FS_BYTES, inodes=FS_INODES) as root:
        store = BlobStore(StoreLayout(root / "store"))
        store.recover()
        if directory_exists:
            await store.put_bytes(neighbour)  # the commit below only needs its hard link
        before = store.count()

        writer = store.writer(expected=digest)
        await writer.write(data)
        await writer.flush()
        with inodes_used_up(root / "filler") as made:
            assert made > 0
            with pytest.raises(RegistryError) as info:
                await writer.commit()
            assert info.value.status == INSUFFICIENT_STORAGE
            assert "disk is full" in info.value.message

            assert writer.failed and not writer.done
            assert not store.has(digest) and store.count() == before
            assert os.listdir(store.layout.tmp_dir) == []  # the partial is gone
            assert store.in_progress(digest) is None
            assert store.room.refused_total == 1  # p2preg_store_no_room_total

        # Refused for a while, as after a full write: no retry loop filling the disk again.
        with pytest.raises(RegistryError) as again:
            store.writer(expected=digest)
        assert again.value.status == INSUFFICIENT_STORAGE
        assert store.room.refused_total == 2
        assert os.listdir(store.layout.tmp_dir) == []

        # Another blob commits once there is room again.
        other = rng.randbytes(5000)
        assert await store.put_bytes(other) == Digest.of_bytes(other)
        assert store.count() == before + 1
