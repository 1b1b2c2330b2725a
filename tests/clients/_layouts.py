"""Read what skopeo wrote back (OCI layouts and ``dir:`` copies) for byte-for-byte comparison.

Owns: ``oci_layout_contents`` and ``dir_contents``. Must not import p2preg.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def oci_layout_contents(layout_dir: Path) -> dict[str, bytes]:
    """Every blob of an OCI layout by digest, after checking each file hashes to its name."""
    out: dict[str, bytes] = {}
    for path in sorted((layout_dir / "blobs" / "sha256").iterdir()):
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == path.name, f"corrupt blob file {path}"
        out[f"sha256:{path.name}"] = data
    return out


def oci_layout_top_digest(layout_dir: Path, tag: str) -> str:
    """The digest ``index.json`` names for ``tag``."""
    index = json.loads((layout_dir / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(entry["digest"])
    raise AssertionError(f"tag {tag!r} not in {layout_dir}/index.json")


def dir_contents(directory: Path) -> dict[str, bytes]:
    """Every file of a skopeo ``dir:`` copy by name (manifest.json, blobs by hex, version)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
