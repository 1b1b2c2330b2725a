"""The access log line: one JSON object per request, through the ``p2preg.access`` logger.

Owns: ``AccessRecord`` (the facts of one answered request), ``format_record`` (its JSON text) and
``emit``. The record is built from request facts that are safe to log: the path without its query
string (query tokens never reach the log), the authenticated *user name* (never a credential
header), the remote address, and the names handlers put in ``request[...]`` (source, digest,
upstream, peer). Who builds records and when is ``observability.py``'s business.

Must not import aiohttp or other p2preg modules.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER_NAME = "p2preg.access"
access_logger = logging.getLogger(ACCESS_LOGGER_NAME)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What one access log line says. Optional fields are left out of the line when unset."""

    ts: float  # wall-clock seconds since the epoch when the response was done
    remote: str | None
    method: str
    path: str
    route: str
    status: int
    bytes: int  # body bytes written to the client
    duration_ms: float
    user: str | None = None
    source: str | None = None
    digest: str | None = None
    upstream: str | None = None
    peer: str | None = None
    ns: str | None = None
    user_agent: str | None = None
    aborted: bool = False  # the body stopped before its end (client gone, handler failed)


def _iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def record_dict(record: AccessRecord) -> dict[str, Any]:
    """The record as the ordered JSON object written to the log."""
    line: dict[str, Any] = {
        "ts": _iso_utc(record.ts),
        "remote": record.remote,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "bytes": record.bytes,
        "duration_ms": round(record.duration_ms, 3),
        "user": record.user,
    }
    optional: dict[str, Any] = {
        "source": record.source,
        "digest": record.digest,
        "upstream": record.upstream,
        "peer": record.peer,
        "ns": record.ns,
        "user_agent": record.user_agent,
    }
    line.update({key: value for key, value in optional.items() if value is not None})
    if record.aborted:
        line["aborted"] = True
    return line


def format_record(record: AccessRecord) -> str:
    """One line of JSON (non-ASCII and control characters escaped: no log injection)."""
    return json.dumps(record_dict(record), ensure_ascii=True, separators=(",", ":"))


def emit(record: AccessRecord, logger: logging.Logger = access_logger,
         level: int = logging.INFO) -> None:
    """Write ``record`` at ``level`` (INFO unless the caller says otherwise); the formatted
    JSON is also attached as ``extra``. Nothing is formatted when the level is off."""
    if logger.isEnabledFor(level):
        logger.log(level, format_record(record), extra={"access": record_dict(record)})
