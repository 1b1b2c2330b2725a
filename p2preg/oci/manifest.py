"""Manifest and index parsing, validation and content negotiation, with no I/O.

Owns: ``parse_manifest`` (bytes + Content-Type -> ``ParsedManifest`` or ``MANIFEST_INVALID``),
``Descriptor``, the 4 MiB ``MAX_MANIFEST_BYTES`` limit, ``is_foreign_layer`` and ``parse_accept``
(every ``Accept`` header line, comma-split, q-values). Whether the referenced blobs exist is the
caller's business: this module only lists them (``blob_references`` / ``manifest_references``).
Must not import aiohttp, storage or any p2preg package outside ``p2preg.oci``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest, parse_digest
from p2preg.oci.errors import ErrorCode, RegistryError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""The largest manifest accepted (the spec asks registries to take at least 4 MiB)."""

_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})
_FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor (the fields a registry acts on)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A validated image manifest or index.

    ``artifact_type`` is what the referrers API reports: the manifest's ``artifactType``, else
    (image manifests only) its config media type, as the distribution spec v1.1 says.
    """

    media_type: str
    digest: Digest
    size: int
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: Mapping[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in mediatypes.INDEX_TYPES

    def blob_references(self) -> list[Descriptor]:
        """Blobs that must exist in the repository: the config and every non-foreign layer."""
        refs = [self.config] if self.config is not None else []
        refs.extend(layer for layer in self.layers if not is_foreign_layer(layer))
        return refs

    def manifest_references(self) -> list[Descriptor]:
        """Child manifests of an index, which must exist in the repository."""
        return list(self.manifests)


def is_foreign_layer(descriptor: Descriptor) -> bool:
    """True for Docker foreign / OCI non-distributable layers, which registries do not hold."""
    return descriptor.media_type in _FOREIGN_LAYER_TYPES


def media_type_of(content_type: str | None) -> str:
    """The bare media type of a Content-Type header value (parameters dropped, lowercased)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def parse_manifest(
    body: bytes,
    content_type: str | None,
    *,
    algorithm: str = "sha256",
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> ParsedManifest:
    """Validate ``body`` as a manifest or index sent with ``content_type``.

    The media type comes from Content-Type when it names a manifest type, else from the body's
    ``mediaType``, else from the structure (``manifests`` -> OCI index, ``config`` -> OCI
    manifest). A ``mediaType`` field that disagrees with Content-Type is refused, as is any
    Content-Type that is neither a manifest type nor a generic JSON/octet-stream type.
    Raises ``RegistryError(MANIFEST_INVALID)`` with a message that says what is wrong.
    """
    if len(body) > max_bytes:
        raise manifest_too_large(len(body), max_bytes)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    media_type = _resolve_media_type(doc, media_type_of(content_type))
    schema_version = doc.get("schemaVersion")
    if type(schema_version) is not int or schema_version != 2:
        raise _invalid("schemaVersion must be 2")
    is_index = media_type in mediatypes.INDEX_TYPES
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if is_index:
        manifests = _descriptor_list(doc, "manifests", required=True)
    else:
        config = _descriptor(doc.get("config"), "config")
        layers = _descriptor_list(doc, "layers", required=media_type == mediatypes.DOCKER_MANIFEST)
    subject = None if doc.get("subject") is None else _descriptor(doc["subject"], "subject")
    artifact_type = _optional_str(doc, "artifactType")
    if artifact_type is None and config is not None:
        artifact_type = config.media_type
    return ParsedManifest(
        media_type=media_type,
        digest=Digest.of_bytes(body, algorithm),
        size=len(body),
        config=config,
        layers=layers,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=_annotations(doc.get("annotations"), "annotations"),
    )


def manifest_too_large(size: int, limit: int = MAX_MANIFEST_BYTES) -> RegistryError:
    """The error for a manifest over ``limit`` bytes: 413 with ``MANIFEST_INVALID``."""
    return RegistryError(
        ErrorCode.MANIFEST_INVALID,
        f"manifest exceeds the {limit} byte limit",
        {"size": size, "limit": limit},
        status=413,
    )


def parse_accept(lines: Iterable[str]) -> tuple[str, ...]:
    """Media types a client accepts, from every ``Accept`` line, best q-value first.

    Entries with ``q=0`` are dropped; malformed q-values count as 1; order among equal q-values
    is the order sent. Wildcards (``*/*``, ``application/*``) are kept as sent.
    """
    weighted: list[tuple[float, int, str]] = []
    for line in lines:
        for part in line.split(","):
            fields = [f.strip() for f in part.split(";")]
            media = fields[0].lower()
            if not media:
                continue
            quality = 1.0
            for param in fields[1:]:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(value.strip())
                    except ValueError:
                        quality = 1.0
            if quality > 0:
                weighted.append((-quality, len(weighted), media))
    weighted.sort()
    return tuple(media for _, _, media in weighted)


def accepts(accepted: Iterable[str], media_type: str) -> bool:
    """True when ``media_type`` matches one of ``accepted`` (exactly or by wildcard).

    An empty ``accepted`` means the client sent no Accept header: it accepts anything.
    """
    accepted = tuple(accepted)
    if not accepted:
        return True
    major = media_type.split("/", 1)[0]
    return any(a in (media_type, "*/*", f"{major}/*") for a in accepted)


def _resolve_media_type(doc: dict[str, Any], content_type: str) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if content_type in mediatypes.MANIFEST_TYPES:
        if declared is not None and declared != content_type:
            raise _invalid(
                f"mediaType {declared!r} does not match Content-Type {content_type!r}",
            )
        return content_type
    if content_type not in _GENERIC_CONTENT_TYPES:
        raise _invalid(f"unsupported manifest media type {content_type!r}")
    if declared is not None:
        if declared not in mediatypes.MANIFEST_TYPES:
            raise _invalid(f"unsupported manifest media type {declared!r}")
        return declared
    if "manifests" in doc:
        return mediatypes.OCI_INDEX
    if "config" in doc:
        return mediatypes.OCI_MANIFEST
    raise _invalid("cannot tell the manifest media type: no Content-Type and no mediaType")


def _descriptor_list(doc: dict[str, Any], field: str, *, required: bool) -> tuple[Descriptor, ...]:
    value = doc.get(field)
    if value is None:
        if required:
            raise _invalid(f"{field} is required")
        return ()
    if not isinstance(value, list):
        raise _invalid(f"{field} must be an array")
    return tuple(_descriptor(item, f"{field}[{i}]") for i, item in enumerate(value))


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        digest = parse_digest(raw_digest)
    except RegistryError as exc:
        raise _invalid(f"{where}.digest is invalid: {exc.message}") from None
    size = value.get("size")
    if type(size) is not int or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    urls = value.get("urls")
    if urls is not None and (
        not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
    ):
        raise _invalid(f"{where}.urls must be an array of strings")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=tuple(urls or ()),
        artifact_type=_optional_str(value, "artifactType", where),
        annotations=_annotations(value.get("annotations"), f"{where}.annotations"),
    )


def _optional_str(doc: dict[str, Any], field: str, where: str = "") -> str | None:
    value = doc.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{where + '.' if where else ''}{field} must be a string")
    return value


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must map strings to strings")
    return dict(value)


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)
