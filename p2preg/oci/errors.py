"""The one registry of OCI Distribution error codes, their HTTP statuses and JSON bodies.

Owns: ``ErrorCode`` (code name -> status + default message) and ``RegistryError``, the exception
every layer raises for a client-visible failure. The HTTP layer turns it into
``{"errors": [{"code", "message", "detail"}]}``. Must not import aiohttp or other p2preg modules.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class ErrorCode(enum.Enum):
    """OCI distribution-spec error codes (plus the Docker-registry extras clients know)."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (404, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    # Not in the spec's table but used by registries and understood by clients.
    RANGE_INVALID = (416, "invalid content range")
    PAGINATION_NUMBER_INVALID = (400, "invalid number of results requested")
    TAG_INVALID = (400, "manifest tag did not match URI")
    MANIFEST_TOO_LARGE = (413, "manifest exceeds the size limit")
    UNAVAILABLE = (503, "service unavailable")
    UPSTREAM_ERROR = (502, "upstream registry error")
    UNKNOWN = (500, "unknown error")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def default_message(self) -> str:
        return self.value[1]


class RegistryError(Exception):
    """A failure the client should see as OCI error JSON.

    ``status`` overrides the code's default status where the spec asks for another one (for example
    ``BLOB_UPLOAD_INVALID`` answered with 416 for an out-of-order chunk). ``headers`` are added to
    the response (``WWW-Authenticate``, ``Range``, ``Retry-After``...).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.detail = detail
        self.status = status if status is not None else code.status
        self.headers = dict(headers or {})
        super().__init__(f"{code.name}: {self.message}")

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()
