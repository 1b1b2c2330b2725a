"""Exit 0 when every ``name==version --hash=sha256:H`` line of a requirements file has a wheel in
the cache directory whose sha256 is H, else 1 (so build.sh fetches only when something is missing).

Standard library only; imports nothing from p2preg.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def all_cached(requirements: Path, cache: Path) -> bool:
    by_name: dict[str, list[Path]] = {}
    for whl in cache.glob("*.whl"):
        by_name.setdefault(_norm(whl.name.split("-")[0]), []).append(whl)
    for line in requirements.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name, version, digest = match.groups()
        found = any(
            whl.name.split("-")[1] == version
            and hashlib.sha256(whl.read_bytes()).hexdigest() == digest
            for whl in by_name.get(_norm(name), [])
        )
        if not found:
            return False
    return True


if __name__ == "__main__":
    sys.exit(0 if all_cached(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
