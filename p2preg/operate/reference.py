"""Image references as users write them, and the repository a mirror node serves them under.

Owns: ``ImageRef`` and ``parse_image``. The rules are Docker's: a first component with a ``.`` or
``:`` or equal to ``localhost`` is a registry host, else the image is Docker Hub's (``docker.io``)
and a one-component name gets ``library/``; ``@sha256:...`` pins a digest (a tag before it is
kept for display only); no tag means ``latest``. ``mirror_repository`` is the name a client uses
on a p2preg mirror: Docker Hub images by their bare name (``library/busybox``), others with the
registry host in front (``ghcr.io/org/app``), which the mirror routes to that registry.

Pure; must not import aiohttp, storage or registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2preg.oci.errors import RegistryError
from p2preg.oci.names import validate_name, validate_tag

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class ImageRefError(ValueError):
    """An image reference that cannot be pulled: the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    registry: str
    repository: str
    reference: str  # a tag or a digest

    @property
    def mirror_repository(self) -> str:
        return self.repository if self.registry == DOCKER_HUB else (
            f"{self.registry}/{self.repository}")

    def __str__(self) -> str:
        sep = "@" if ":" in self.reference else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def parse_image(text: str) -> ImageRef:
    """``busybox:latest`` -> docker.io/library/busybox:latest (see the module docstring)."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise ImageRefError(f"not an image reference: {text!r}")
    name, reference = text, "latest"
    if "@" in text:
        name, reference = text.split("@", 1)
        if not reference.startswith("sha256:") or len(reference) != 71:
            raise ImageRefError(f"{text}: a digest is sha256: and 64 hex digits")
        try:
            int(reference[7:], 16)
        except ValueError:
            raise ImageRefError(f"{text}: a digest is sha256: and 64 hex digits") from None
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]  # name:tag@digest: the digest wins
    elif ":" in name.rsplit("/", 1)[-1]:
        name, reference = name.rsplit(":", 1)
        try:
            validate_tag(reference)
        except RegistryError as exc:
            raise ImageRefError(f"{text}: invalid tag {reference!r}") from exc
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first.lower(), rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    try:
        validate_name(repository)
    except RegistryError as exc:
        raise ImageRefError(f"{text}: invalid repository name {repository!r}") from exc
    return ImageRef(registry, repository, reference)
