"""The members API: ``GET /p2p/v1/members`` and its client side for ``p2preg members``.

Owns: the JSON shape of a member as the HTTP API shows it (``member_to_json``), the aiohttp route
table (``members_routes``) served from any ``MembersSource``, the CLI helpers ``fetch_members`` and
``format_members_table``. Answer shape::

    {"self": "node-a",
     "members": [{"name", "address", "advertise", "status", "zone", "incarnation",
                  "rtt_ms", "load", "meta"}, ...]}

``address`` is the gossip ``host:port``, ``advertise`` the HTTP ``host:port`` peers fetch blobs
from, ``status`` one of ``alive``, ``suspect``, ``dead``, ``left``; ``rtt_ms`` is null until a
network coordinate is known. Members are sorted by name. Errors are OCI error JSON.

Must not import the gossip driver or service (they depend on this module's ``MembersSource``
protocol, not the other way round), nor the registry package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from p2preg.gossip.config import format_host_port
from p2preg.gossip.member import Member, MemberStatus
from p2preg.oci.errors import ErrorCode, RegistryError

MEMBERS_PATH = "/p2p/v1/members"
STATUSES = frozenset(s.value for s in MemberStatus)


class MembersSource(Protocol):
    """What the members endpoint needs from a running gossip service."""

    @property
    def node_name(self) -> str: ...

    def members(self) -> list[Member]: ...


def member_to_json(member: Member) -> dict[str, Any]:
    """One member as ``GET /p2p/v1/members`` shows it."""
    rtt = member.rtt_estimate_s
    return {
        "name": member.name,
        "address": format_host_port(*member.gossip_addr),
        "advertise": member.http_addr,
        "status": member.status.value,
        "zone": member.zone,
        "incarnation": member.incarnation,
        "rtt_ms": None if rtt is None else round(rtt * 1000.0, 3),
        "load": member.load,
        "meta": dict(member.meta),
    }


def members_document(self_name: str, members: Iterable[Member]) -> dict[str, Any]:
    """The whole answer body, members sorted by name."""
    ordered = sorted(members, key=lambda m: m.name)
    return {"self": self_name, "members": [member_to_json(m) for m in ordered]}


def _error_response(error: RegistryError) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=error.headers,
    )


def members_routes(source: MembersSource) -> web.RouteTableDef:
    """Routes to add to any aiohttp app: ``app.add_routes(members_routes(service))``."""
    routes = web.RouteTableDef()

    @routes.get(MEMBERS_PATH)
    async def get_members(request: web.Request) -> web.StreamResponse:
        status_filter = request.query.getall("status", [])
        unknown = [s for s in status_filter if s not in STATUSES]
        if unknown:
            return _error_response(
                RegistryError(
                    ErrorCode.UNSUPPORTED,
                    "unknown member status filter",
                    {"status": unknown, "allowed": sorted(STATUSES)},
                    status=400,
                )
            )
        try:
            members = source.members()
        except RuntimeError:  # the gossip layer is not started (yet) or already stopped
            return _error_response(
                RegistryError(ErrorCode.UNAVAILABLE, "the gossip layer is not running")
            )
        if status_filter:
            members = [m for m in members if m.status.value in status_filter]
        return web.json_response(members_document(source.node_name, members))

    return routes


def members_app(source: MembersSource) -> web.Application:
    """A stand-alone app serving only the members API (tests, the standalone runner)."""
    app = web.Application()
    app.add_routes(members_routes(source))
    return app


class MembersFetchError(Exception):
    """``p2preg members`` could not get a valid answer from the node (message is for people)."""


def _validate_document(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        raise MembersFetchError("the node answered without a 'members' list")
    for entry in doc["members"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise MembersFetchError("the node answered a member without a name")
    return doc


async def fetch_members(
    node_url: str, *, timeout_s: float = 10.0, session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """GET ``<node_url>/p2p/v1/members`` and return the validated JSON document.

    ``headers`` are sent with it (a cluster-key signature of ``GET /p2p/v1/members``, for a
    node whose members list is only on its signed peer listener).

    Raises ``MembersFetchError`` with a readable message on connection errors, non-200 answers
    (the OCI error message is quoted) or a malformed body.
    """
    url = node_url.rstrip("/") + MEMBERS_PATH
    own = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
    try:
        async with client.get(url, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise MembersFetchError(f"{url}: HTTP {resp.status}: {_error_message(text)}")
            try:
                doc = json.loads(text)
            except ValueError:
                raise MembersFetchError(f"{url}: the answer is not JSON") from None
            return _validate_document(doc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MembersFetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        if own:
            await client.close()


def _error_message(text: str) -> str:
    try:
        errors = json.loads(text)["errors"]
        return "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return text[:200]


TABLE_COLUMNS: Sequence[tuple[str, str]] = (
    ("NAME", "name"),
    ("STATUS", "status"),
    ("ADDRESS", "address"),
    ("ADVERTISE", "advertise"),
    ("ZONE", "zone"),
    ("INC", "incarnation"),
    ("RTT", "rtt_ms"),
)


def _cell(key: str, value: object) -> str:
    if value is None or value == "":
        return "-"
    if key == "rtt_ms" and isinstance(value, int | float):
        return f"{value:.1f}ms"
    return str(value).replace("\n", " ")


def format_members_table(doc: dict[str, Any]) -> str:
    """The members document as an aligned text table, this node marked with ``*``, then a
    one-line count per status. Tolerates missing fields (shown as ``-``)."""
    members = [m for m in doc.get("members", []) if isinstance(m, dict)]
    me = doc.get("self")
    rows = [[title for title, _ in TABLE_COLUMNS]]
    for m in sorted(members, key=lambda m: str(m.get("name", ""))):
        row = [_cell(key, m.get(key)) for _, key in TABLE_COLUMNS]
        if me is not None and m.get("name") == me:
            row[0] += " *"
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for m in members:
        status = str(m.get("status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    order = [s.value for s in MemberStatus] + sorted(set(counts) - STATUSES)
    summary = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    lines.append(f"{len(members)} members" + (f": {summary}" if summary else ""))
    return "\n".join(lines) + "\n"
