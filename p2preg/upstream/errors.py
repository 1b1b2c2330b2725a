"""Why an upstream request failed, in terms the mirror can turn into an OCI error.

Owns: ``UpstreamError`` and its kinds (not found, denied, unavailable, protocol violation), each
carrying the registry name and a human reason that ends up in the client's error message. Must
not import aiohttp or any other p2preg package except ``p2preg.oci``.
"""

from __future__ import annotations

from p2preg.oci.errors import ErrorCode, RegistryError


class UpstreamError(Exception):
    """An upstream request failed; ``reason`` says why, for logs and the client's error detail."""

    #: The OCI error a client sees when nothing local can stand in for the upstream.
    code: ErrorCode = ErrorCode.UPSTREAM_ERROR

    def __init__(self, registry: str, reason: str, *, status: int | None = None) -> None:
        self.registry = registry
        self.reason = reason
        self.status = status
        super().__init__(f"upstream {registry}: {reason}")

    def to_registry_error(self, code: ErrorCode | None = None) -> RegistryError:
        """The OCI error for a client: ``code`` overrides the kind's default (e.g. BLOB_UNKNOWN)."""
        return RegistryError(
            code or self.code,
            f"upstream {self.registry}: {self.reason}",
            {"upstream": self.registry, "reason": self.reason},
        )


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404: the manifest, tag, blob or repository does not exist there."""

    code = ErrorCode.MANIFEST_UNKNOWN


class UpstreamDenied(UpstreamError):
    """The upstream refused our credentials (401/403 after the challenge flow)."""

    code = ErrorCode.DENIED


class UpstreamUnavailable(UpstreamError):
    """Unreachable, timed out, or 5xx/429 after every retry: a transient failure."""

    code = ErrorCode.UNAVAILABLE


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something a registry must not (wrong digest, bad range, too big)."""

    code = ErrorCode.UPSTREAM_ERROR
