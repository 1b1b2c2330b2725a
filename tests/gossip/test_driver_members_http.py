"""Specification of the members API: the JSON document, the HTTP endpoint and the CLI table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from p2preg.gossip.http import (
    MembersFetchError,
    fetch_members,
    format_members_table,
    member_to_json,
    members_app,
)
from p2preg.gossip.member import Member, MemberStatus


def _member(name: str, status: MemberStatus, port: int, rtt_s: float | None = None) -> Member:
    return Member(
        name=name,
        gossip_addr=("127.0.0.1", port),
        http_addr=f"127.0.0.1:{port + 1000}",
        zone="zone-a" if port % 2 else "",
        incarnation=port % 7,
        status=status,
        rtt_estimate_s=rtt_s,
    )


class StaticMembers:
    def __init__(self, name: str, members: list[Member]) -> None:
        self._name = name
        self._members = members

    @property
    def node_name(self) -> str:
        return self._name

    def members(self) -> list[Member]:
        return list(self._members)


CLUSTER = [
    _member("node-c", MemberStatus.DEAD, 7003),
    _member("node-a", MemberStatus.ALIVE, 7001, rtt_s=0.0012345),
    _member("node-b", MemberStatus.SUSPECT, 7002, rtt_s=0.25),
    _member("node-d", MemberStatus.LEFT, 7004),
]


@pytest.fixture
async def node_url() -> AsyncIterator[str]:
    runner = web.AppRunner(members_app(StaticMembers("node-a", CLUSTER)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_member_json_has_every_documented_field() -> None:
    doc = member_to_json(_member("node-a", MemberStatus.ALIVE, 7001, rtt_s=0.0012345))
    assert doc == {
        "name": "node-a",
        "address": "127.0.0.1:7001",
        "advertise": "127.0.0.1:8001",
        "status": "alive",
        "zone": "zone-a",
        "incarnation": 7001 % 7,
        "rtt_ms": 1.234,
        "load": 0.0,
        "meta": {},
    }


def test_member_json_brackets_ipv6_gossip_addresses_and_nulls_unknown_rtt() -> None:
    m = Member("v6", ("::1", 7946), "[::1]:5000", "", 1, MemberStatus.ALIVE)
    doc = member_to_json(m)
    assert doc["address"] == "[::1]:7946"
    assert doc["rtt_ms"] is None


async def test_members_endpoint_lists_every_status_sorted_by_name(node_url: str) -> None:
    doc = await fetch_members(node_url)
    assert doc["self"] == "node-a"
    assert [(m["name"], m["status"]) for m in doc["members"]] == [
        ("node-a", "alive"),
        ("node-b", "suspect"),
        ("node-c", "dead"),
        ("node-d", "left"),
    ]


async def test_members_endpoint_filters_by_status(node_url: str) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.get(node_url + "/p2p/v1/members?status=dead&status=left") as r,
    ):
        assert r.status == 200
        body: dict[str, Any] = await r.json()
    assert [m["name"] for m in body["members"]] == ["node-c", "node-d"]


async def test_unknown_status_filter_is_an_oci_error_not_a_crash(node_url: str) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.get(node_url + "/p2p/v1/members?status=zombie") as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert body["errors"][0]["code"] == "UNSUPPORTED"
    assert body["errors"][0]["detail"]["status"] == ["zombie"]


async def _serve_once(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/p2p/v1/members", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_fetch_members_reports_http_errors_with_the_oci_message() -> None:
    async def handler(request: web.Request) -> web.Response:
        body = {"errors": [{"code": "UNAVAILABLE", "message": "gossip not started"}]}
        return web.json_response(body, status=503)

    runner, url = await _serve_once(handler)
    try:
        with pytest.raises(MembersFetchError, match="HTTP 503: UNAVAILABLE: gossip not started"):
            await fetch_members(url)
    finally:
        await runner.cleanup()


async def test_fetch_members_reports_a_node_that_is_not_listening() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MembersFetchError, match=f"127.0.0.1:{port}"):
        await fetch_members(f"http://127.0.0.1:{port}", timeout_s=5)


async def test_fetch_members_rejects_a_body_without_members() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    runner, url = await _serve_once(handler)
    try:
        with pytest.raises(MembersFetchError, match="'members' list"):
            await fetch_members(url)
    finally:
        await runner.cleanup()


async def test_fetch_members_rejects_a_body_that_is_not_json() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>")

    runner, url = await _serve_once(handler)
    try:
        with pytest.raises(MembersFetchError, match="not JSON"):
            await fetch_members(url)
    finally:
        await runner.cleanup()


def test_table_aligns_columns_marks_self_and_counts_statuses() -> None:
    from p2preg.gossip.http import members_document

    table = format_members_table(members_document("node-a", CLUSTER))
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ADDRESS", "ADVERTISE", "ZONE", "INC", "RTT"]
    assert lines[1].startswith("node-a *")
    assert "1.2ms" in lines[1]
    assert lines[2].split()[:2] == ["node-b", "suspect"]
    assert "250.0ms" in lines[2]
    assert lines[3].split()[:2] == ["node-c", "dead"]
    status_col = lines[0].index("STATUS")
    assert all(line[status_col - 2 : status_col] == "  " for line in lines[1:5])
    assert lines[-1] == "4 members: 1 alive, 1 suspect, 1 dead, 1 left"


def test_table_tolerates_missing_fields_and_unknown_statuses() -> None:
    table = format_members_table({"members": [{"name": "x", "status": "weird"}, "junk"]})
    lines = table.splitlines()
    assert lines[1].split() == ["x", "weird", "-", "-", "-", "-", "-"]
    assert lines[-1] == "1 members: 1 weird"


def test_table_of_an_empty_cluster_has_only_the_header_and_count() -> None:
    assert format_members_table({"members": []}).splitlines()[-1] == "0 members"
