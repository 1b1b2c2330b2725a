"""Repository names, tags and references as the OCI distribution spec defines them.

Owns: ``validate_name``, ``validate_tag``, ``is_tag`` and the length limits. A name is also used to
build paths and SQL keys, so these checks are strict and raise ``NAME_INVALID`` / ``TAG_INVALID``.
"""

from __future__ import annotations

import re

from p2preg.oci.errors import ErrorCode, RegistryError

# spec.md: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise ``NAME_INVALID``."""
    if not name or len(name) > MAX_NAME_LENGTH or _NAME_RE.match(name) is None:
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid repository name", {"name": name})
    return name


def is_tag(reference: str) -> bool:
    return _TAG_RE.match(reference) is not None


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it matches the tag grammar, else raise ``TAG_INVALID``."""
    if not is_tag(tag):
        raise RegistryError(ErrorCode.TAG_INVALID, "invalid tag", {"tag": tag})
    return tag
