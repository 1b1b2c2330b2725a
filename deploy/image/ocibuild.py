"""Assemble the p2preg image as an OCI image layout and archive, byte for byte reproducibly.

Owns: turning a Debian rootfs tarball (from mmdebstrap) and a staged application tree into two
gzip'd layers, the image config (entrypoint, user, environment, OCI labels), the manifest, the
``index.json`` and a deterministic ``oci-archive`` tarball. Called by ``deploy/image/build.sh``.

Reproducible by construction: every timestamp is ``--epoch`` (``SOURCE_DATE_EPOCH``) or clamped
to it, the application layer's files are sorted with uid/gid 0 and normalised modes, gzip headers
carry no name and mtime 0, JSON is written with sorted keys. Same inputs, same digests.

Standard library only (runs before any venv exists); imports nothing from p2preg.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
UID = 10001  # the image's "p2preg" user and group (created in the rootfs by build.sh)
DATA_DIR = "/var/lib/p2preg"
GZIP_LEVEL = 6
CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += len(view)
        self.inner.write(view)
        return len(view)


def _write_blob(layout: Path, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data))


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _LayerWriter:
    """Writes one tar layer, gzip'd, into the layout; records diff_id and blob digest."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.tmp = layout / "blobs" / "sha256" / ".layer.tmp"
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        self._compressed = _HashingWriter(self._file)
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._compressed,
                                   compresslevel=GZIP_LEVEL, mtime=0)
        self._plain = _HashingWriter(self._gzip)
        self.tar = tarfile.open(  # noqa: SIM115 - closed in finish()
            fileobj=self._plain, mode="w|", format=tarfile.PAX_FORMAT)

    def finish(self) -> tuple[Blob, str]:
        self.tar.close()
        self._gzip.close()
        self._file.close()
        digest = self._compressed.sha.hexdigest()
        os.replace(self.tmp, self.layout / "blobs" / "sha256" / digest)
        diff_id = f"sha256:{self._plain.sha.hexdigest()}"
        return Blob(f"sha256:{digest}", self._compressed.size), diff_id


def base_layer(layout: Path, rootfs: Path, epoch: int) -> tuple[Blob, str]:
    """The Debian rootfs as a layer: mmdebstrap's order kept (hard links follow their targets),
    device nodes dropped (the runtime provides /dev), mtimes clamped to ``epoch``."""
    out = _LayerWriter(layout)
    with tarfile.open(rootfs, mode="r|") as src:
        for member in src:
            name = member.name.removeprefix("./")
            if not name or name == ".":
                continue
            if name.startswith("dev/") or member.ischr() or member.isblk() or member.isfifo():
                continue
            member.name = name
            if member.islnk():
                member.linkname = member.linkname.removeprefix("./")
            member.mtime = min(int(member.mtime), epoch)
            member.pax_headers = {}
            fileobj = src.extractfile(member) if member.isfile() else None
            out.tar.addfile(member, fileobj)
    return out.finish()


def app_layer(layout: Path, stage: Path, epoch: int) -> tuple[Blob, str]:
    """Every file under ``stage`` at the same path in the image: sorted, owned by root, modes
    normalised (0755 for directories and executables, 0644 otherwise), mtime ``epoch``; the
    data directory owned by the image's user."""
    out = _LayerWriter(layout)
    paths = sorted(stage.rglob("*"), key=lambda p: p.relative_to(stage).as_posix())
    for path in paths:
        rel = path.relative_to(stage).as_posix()
        st = path.lstat()
        info = tarfile.TarInfo(rel)
        info.mtime = epoch
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            if rel == DATA_DIR.lstrip("/"):
                info.uid = info.gid = UID
                info.uname = info.gname = "p2preg"
                info.mode = 0o750
            out.tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
            info.mode = 0o777
            out.tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(path, "rb") as fh:
                out.tar.addfile(info, fh)
        else:
            raise SystemExit(f"ocibuild: unsupported file type in stage: {rel}")
    return out.finish()


def image_config(*, epoch: int, diff_ids: list[str], labels: dict[str, str]) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/usr/local/bin/p2preg"],
            "Cmd": ["serve"],
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                f"HOME={DATA_DIR}",
                f"P2PREG_DATA_DIR={DATA_DIR}",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
            ],
            "WorkingDir": DATA_DIR,
            "Volumes": {DATA_DIR: {}},
            "ExposedPorts": {"5000/tcp": {}, "7946/tcp": {}, "7946/udp": {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": created, "created_by": "mmdebstrap (Debian bookworm: python3)",
             "comment": "deploy/image/build.sh"},
            {"created": created, "created_by": "pip install p2preg + locked wheels",
             "comment": "deploy/image/build.sh"},
        ],
    }


def build_layout(args: argparse.Namespace) -> str:
    layout = Path(args.layout)
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    labels = {
        "org.opencontainers.image.title": "p2preg",
        "org.opencontainers.image.description": "peer-to-peer OCI registry node",
        "org.opencontainers.image.source": args.source,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime(args.epoch)),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": "debian:bookworm (mmdebstrap)",
    }
    base, base_diff = base_layer(layout, Path(args.rootfs), args.epoch)
    app, app_diff = app_layer(layout, Path(args.stage), args.epoch)
    config = _write_blob(layout, _json_bytes(image_config(epoch=args.epoch,
                                                          diff_ids=[base_diff, app_diff],
                                                          labels=labels)))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": MT_LAYER, "digest": b.digest, "size": b.size}
                   for b in (base, app)],
        "annotations": {k: v for k, v in labels.items() if not k.endswith(".description")},
    }
    manifest = _write_blob(layout, _json_bytes(manifest_doc))
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": manifest.digest, "size": manifest.size,
            "annotations": {"org.opencontainers.image.ref.name": args.version},
        }],
    }
    (layout / "index.json").write_bytes(_json_bytes(index))
    (layout / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    _archive(layout, Path(args.archive), args.epoch)
    print(json.dumps({"manifest": manifest.digest, "config": config.digest,
                      "layers": [base.digest, app.digest],
                      "compressed_bytes": base.size + app.size + config.size + manifest.size}))
    return manifest.digest


def _archive(layout: Path, archive: Path, epoch: int) -> None:
    """The layout as a plain tar (what ``oci-archive:`` reads), sorted, root-owned, mtime epoch."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*"), key=lambda p: p.relative_to(layout).as_posix()):
            info = tarfile.TarInfo(path.relative_to(layout).as_posix())
            info.mtime = epoch
            info.uname = info.gname = "root"
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o644
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    os.replace(tmp, archive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", required=True, help="mmdebstrap's rootfs tarball")
    parser.add_argument("--stage", required=True, help="directory tree of the application layer")
    parser.add_argument("--layout", required=True, help="OCI image layout directory to write")
    parser.add_argument("--archive", required=True, help="oci-archive tarball to write")
    parser.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH")
    parser.add_argument("--version", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--source", required=True)
    build_layout(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
