"""A small file system for disk-full tests: a tmpfs of a given size, mounted by the test and
unmounted after it (root only: skipped with the reason otherwise, a failure under CI)."""

from __future__ import annotations

import contextlib
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
