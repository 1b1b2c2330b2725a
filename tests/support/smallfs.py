"""A small file system for disk-full tests: a tmpfs of a given size (and inode count), mounted by
the test and unmounted after it (root only: skipped with the reason otherwise, a failure under
CI); ``inodes_used_up`` fills its inode table for a moment."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require_root


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int, *, inodes: int | None = None) -> Iterator[Path]:
    """Mount a ``size_bytes`` tmpfs on ``path`` (created) for the duration of the block.

    ``inodes`` caps its inodes: a tmpfs charges one for every file, directory and hard link, so
    a full inode table makes ``link``/``mkdir`` fail with ``ENOSPC`` (a commit on a full disk).
    """
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes},mode=0700" + ("" if inodes is None else f",nr_inodes={inodes}")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], check=False)
        if result.returncode != 0:  # something still holds a file: detach it anyway
            subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def inodes_used_up(directory: Path) -> Iterator[int]:
    """Create empty files in ``directory`` until the file system has no inode left; remove them
    after the block. Yields how many it took."""
    directory.mkdir()
    made = 0
    try:
        while True:
            try:
                (directory / f"f{made}").touch(exist_ok=False)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            made += 1
        yield made
    finally:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        directory.rmdir()
