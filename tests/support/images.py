"""Build OCI image layouts offline, with the standard library only, for tests and benchmarks.

Owns: ``build_image`` (an OCI image layout directory: ``oci-layout``, ``index.json`` and
``blobs/sha256/...``), the ``BuiltImage`` / ``Platform`` descriptions of what was built, and
``random_bytes`` (seeded payloads). Every image is deterministic: the same arguments give the same
bytes and so the same digests (fixed mtimes, uid 0, gzip header mtime 0, seeded payloads).

An image holds, per platform: a gzip'd tar layer with ``/bin/busybox`` (from ``busybox-static``)
and ``sh``/``cat``/``echo``/``ls`` links to it, a small layer with ``/etc/hello.txt``, then any
number of seeded random payload layers. With two or more platforms the tag points to an OCI image
index.

Must not import p2preg (tests check the product against bytes built independently of it) and
does no network I/O.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

BUSYBOX_PATH = Path("/bin/busybox")
BUSYBOX_LINKS = ("sh", "cat", "echo", "ls")
_FIXED_MTIME = 1_700_000_000
_CREATED = "2023-11-14T22:13:20Z"


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform (``os``/``architecture``[/``variant``])."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def as_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


HOST_PLATFORM = Platform("linux", "amd64")
MULTI_ARCH = (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor for a blob written into the layout."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """One platform's image manifest and the blobs it references."""

    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    hello_text: str


@dataclass(frozen=True)
class BuiltImage:
    """What ``build_image`` wrote: the layout directory, the tag and every digest in it."""

    layout_dir: Path
    tag: str
    top: Descriptor  # the tagged manifest or index (what index.json names)
    images: tuple[PlatformImage, ...]
    index: Descriptor | None = None  # set for multi-platform images

    @property
    def oci_ref(self) -> str:
        """The skopeo reference of the tagged image: ``oci:DIR:TAG``."""
        return f"oci:{self.layout_dir}:{self.tag}"

    @property
    def manifest_digests(self) -> list[str]:
        """Every manifest digest (index first when there is one)."""
        out = [self.index.digest] if self.index else []
        return out + [img.manifest.digest for img in self.images]

    @property
    def blob_digests(self) -> list[str]:
        """Every config and layer digest, without duplicates, in first-seen order."""
        seen: dict[str, None] = {}
        for img in self.images:
            seen.setdefault(img.config.digest, None)
            for layer in img.layers:
                seen.setdefault(layer.digest, None)
        return list(seen)

    def read(self, digest: str) -> bytes:
        """The bytes of any blob or manifest in the layout, by digest."""
        algorithm, _, hex_ = digest.partition(":")
        if algorithm != "sha256" or len(hex_) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return (self.layout_dir / "blobs" / "sha256" / hex_).read_bytes()


def random_bytes(size_bytes: int, seed: int) -> bytes:
    """``size_bytes`` pseudo-random bytes from a seeded generator (fast, deterministic)."""
    return random.Random(seed).randbytes(size_bytes)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_image(
    dest: Path,
    *,
    tag: str = "latest",
    platforms: Sequence[Platform] = (HOST_PLATFORM,),
    payload_layer_sizes: Sequence[int] = (),
    seed: int = 0,
    hello_text: str | None = None,
    busybox: Path = BUSYBOX_PATH,
) -> BuiltImage:
    """Write an OCI image layout to ``dest`` and describe it.

    ``payload_layer_sizes`` adds one layer per entry holding ``/payload/<i>.bin`` with that many
    seeded random bytes (so images with different seeds share the busybox layer but nothing else).
    ``hello_text`` defaults to ``"hello from p2preg test image <platform> seed <seed>\\n"``.
    Several images may share one ``dest``: each tag is added to ``index.json``.
    """
    if not platforms:
        raise ValueError("at least one platform")
    layout = _Layout(dest)
    busybox_bytes = busybox.read_bytes()
    images: list[PlatformImage] = []
    for platform_number, platform in enumerate(platforms):
        text = hello_text
        if text is None:
            text = f"hello from p2preg test image {platform} seed {seed}\n"
        images.append(
            _build_platform_image(
                layout,
                platform,
                busybox_bytes=busybox_bytes,
                hello_text=text,
                payload_layer_sizes=payload_layer_sizes,
                seed=seed * 1000 + platform_number,
            )
        )
    index: Descriptor | None = None
    if len(images) == 1:
        top = images[0].manifest
    else:
        index_doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [
                {**img.manifest.as_json(), "platform": img.platform.as_json()} for img in images
            ],
        }
        index = layout.write_blob(MT_OCI_INDEX, _canonical_json(index_doc))
        top = index
    layout.tag(tag, top)
    return BuiltImage(layout_dir=dest, tag=tag, top=top, images=tuple(images), index=index)


def _build_platform_image(
    layout: _Layout,
    platform: Platform,
    *,
    busybox_bytes: bytes,
    hello_text: str,
    payload_layer_sizes: Sequence[int],
    seed: int,
) -> PlatformImage:
    layer_tars = [
        _busybox_tar(busybox_bytes),
        _files_tar({"etc/hello.txt": hello_text.encode()}),
    ]
    for i, size in enumerate(payload_layer_sizes):
        layer_tars.append(_files_tar({f"payload/{i}.bin": random_bytes(size, seed * 7919 + i)}))
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for tar_bytes in layer_tars:
        diff_ids.append(sha256_digest(tar_bytes))
        layers.append(layout.write_blob(MT_OCI_LAYER_GZIP, _gzip(tar_bytes)))
    config_doc = {
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "created": _CREATED,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": _CREATED, "created_by": "tests/support/images.py"}] * len(layers),
    }
    config = layout.write_blob(MT_OCI_CONFIG, _canonical_json(config_doc))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config.as_json(),
        "layers": [layer.as_json() for layer in layers],
    }
    manifest = layout.write_blob(MT_OCI_MANIFEST, _canonical_json(manifest_doc))
    return PlatformImage(
        platform=platform,
        manifest=manifest,
        config=config,
        layers=tuple(layers),
        hello_text=hello_text,
    )


class _Layout:
    """Writes blobs and tags into an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        self.index_path = root / "index.json"
        if not self.index_path.exists():
            self._write_index([])

    def write_blob(self, media_type: str, data: bytes) -> Descriptor:
        digest = sha256_digest(data)
        path = self.blob_dir / digest.partition(":")[2]
        if not path.exists():
            path.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def tag(self, tag: str, descriptor: Descriptor) -> None:
        index = json.loads(self.index_path.read_text())
        manifests = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
        ]
        manifests.append({**descriptor.as_json(), "annotations": {REF_NAME_ANNOTATION: tag}})
        self._write_index(manifests)

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}
        self.index_path.write_bytes(_canonical_json(doc))


def _canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _gzip(data: bytes) -> bytes:
    # Level 1: payload layers are random and would not shrink anyway; mtime 0 for determinism.
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def _tar_info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = _FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _busybox_tar(busybox_bytes: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info("bin", tarfile.DIRTYPE, 0o755))
        info = _tar_info("bin/busybox", tarfile.REGTYPE, 0o755)
        info.size = len(busybox_bytes)
        tar.addfile(info, io.BytesIO(busybox_bytes))
        for link in BUSYBOX_LINKS:
            sym = _tar_info(f"bin/{link}", tarfile.SYMTYPE, 0o777)
            sym.linkname = "busybox"
            tar.addfile(sym)
    return out.getvalue()


def _files_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in files:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in dirs:
                    dirs.add(directory)
                    tar.addfile(_tar_info(directory, tarfile.DIRTYPE, 0o755))
        for name, data in files.items():
            info = _tar_info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
