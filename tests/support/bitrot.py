"""Bit rot on demand: flip one bit of a stored blob file in place, its mtime kept."""

from __future__ import annotations

import os
from pathlib import Path


def flip_bit(path: Path, offset: int = 10) -> None:
    """Flip the lowest bit of the byte at ``offset`` of ``path``; atime and mtime unchanged."""
    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
