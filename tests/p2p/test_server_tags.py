"""``GET /p2p/v1/tags/<registry>/<repository>/<tag>`` and its client (``tags.ask_peers``) on
loopback, the strict reading of answers, and which peers a node asks (``nearest_peers``)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from p2preg.clock import FakeClock
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.wire import Keyring
from p2preg.oci.digest import parse_digest
from p2preg.oci.errors import RegistryError
from p2preg.p2p.auth import NODE_HEADER, RequestSigner, RequestVerifier
from p2preg.p2p.node_glue import nearest_peers
from p2preg.p2p.routing import Peer
from p2preg.p2p.server import P2PServer
from p2preg.p2p.tags import TagAnswer, TagAsk, ask_peers, parse_answer, tag_path
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import TagConfirmation
from tests.p2p.harness import KEY_A, start_app

T0 = 1_700_000_000.0
DIGEST = "sha256:" + "c" * 64
PATH = "/p2p/v1/tags/docker.io/library/app/latest"


@dataclass
class TagServer:
    server: P2PServer
    host: str
    known: dict[tuple[str, str, str], TagConfirmation] = field(default_factory=dict)
    asked: list[tuple[str, str, str]] = field(default_factory=list)

    def peer(self, name: str = "server") -> Peer:
        return Peer(name, self.host)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


MakeServer = Callable[..., Awaitable[TagServer]]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[MakeServer]:
    """``await make_server(keyring=None)``: an endpoint whose lookup answers from ``known``."""
    runners: list[web.AppRunner] = []

    async def make(keyring: Keyring | None = None) -> TagServer:
        blobs = BlobStore(StoreLayout(tmp_path / f"store{len(runners)}"))
        known: dict[tuple[str, str, str], TagConfirmation] = {}
        asked: list[tuple[str, str, str]] = []

        def lookup(registry: str, repository: str, tag: str) -> TagConfirmation | None:
            asked.append((registry, repository, tag))
            return known.get((registry, repository, tag))

        verifier = None if keyring is None else RequestVerifier(keyring, clock=FakeClock(T0))
        server = P2PServer(blobs, tags=lookup, verifier=verifier)
        runner, host = await start_app(server.app())
        runners.append(runner)
        return TagServer(server, host, known, asked)

    yield make
    for runner in runners:
        await runner.cleanup()


async def get(http: aiohttp.ClientSession, host: str, path: str,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    async with http.get(f"http://{host}{path}", headers=headers) as response:
        body = await response.read()
        assert response.content_type == "application/json"
        return response.status, json.loads(body)


def ask(*, signer: RequestSigner | None = None, timeout_s: float = 1.0) -> TagAsk:
    return TagAsk(node_name="asker", signer=signer, timeout_s=timeout_s)


# -- the endpoint ----------------------------------------------------------------------------


async def test_a_known_tag_is_answered_with_this_nodes_confirmation(
        make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    served: TagServer = await make_server()
    served.known[("docker.io", "library/app", "latest")] = TagConfirmation(DIGEST, T0 - 60)
    status, body = await get(http, served.host, PATH, {NODE_HEADER: "asker"})
    assert (status, body) == (200, {"digest": DIGEST, "confirmed_at": T0 - 60})
    assert served.server.stats.served["tag"] == 1


async def test_an_unknown_tag_is_404_and_not_a_failure_of_the_peer(
        make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    served: TagServer = await make_server()
    status, body = await get(http, served.host, PATH, {NODE_HEADER: "asker"})
    assert status == 404
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"  # type: ignore[index]
    failures: list[tuple[str, str]] = []
    answers = await ask_peers(http, [served.peer()], PATH, ask(), now=lambda: T0,
                              on_failure=lambda peer, reason: failures.append((peer, reason)))
    assert answers == [] and failures == []
    assert served.server.stats.served["tag_unknown"] == 2


@pytest.mark.parametrize(("path", "code", "reason"), [
    ("/p2p/v1/tags/Docker.IO/library/app/latest", "NAME_INVALID", "bad_name"),
    ("/p2p/v1/tags/docker.io/Library/App/latest", "NAME_INVALID", "bad_name"),
    ("/p2p/v1/tags/docker.io/library//app/latest", "NAME_INVALID", "bad_name"),
    ("/p2p/v1/tags/docker.io/library/app/-latest", "TAG_INVALID", "bad_tag"),
    ("/p2p/v1/tags/docker.io/library/app/" + "x" * 129, "TAG_INVALID", "bad_tag"),
    ("/p2p/v1/tags/docker.io/library/app/a%20b", "TAG_INVALID", "bad_tag"),
])
async def test_bad_names_and_tags_are_oci_errors_and_never_looked_up(
        make_server: MakeServer, http: aiohttp.ClientSession, path: str, code: str,
        reason: str) -> None:
    served: TagServer = await make_server()
    status, body = await get(http, served.host, path, {NODE_HEADER: "asker"})
    assert status == 400
    assert body["errors"][0]["code"] == code  # type: ignore[index]
    assert served.server.stats.rejected[reason] == 1
    assert served.asked == []


async def test_a_request_that_names_no_node_is_refused(
        make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    served: TagServer = await make_server()
    status, body = await get(http, served.host, PATH)
    assert status == 400
    assert body["errors"][0]["detail"]["reason"] == "not_a_peer"  # type: ignore[index]


async def test_with_a_cluster_key_only_signed_requests_are_answered(
        make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    served: TagServer = await make_server(Keyring([KEY_A]))
    served.known[("docker.io", "library/app", "latest")] = TagConfirmation(DIGEST, T0 - 5)
    status, body = await get(http, served.host, PATH, {NODE_HEADER: "asker"})
    assert status == 401
    assert body["errors"][0]["code"] == "UNAUTHORIZED"  # type: ignore[index]
    assert served.asked == []
    failures: list[str] = []
    unsigned = await ask_peers(http, [served.peer()], PATH, ask(), now=lambda: T0,
                               on_failure=lambda peer, reason: failures.append(reason))
    assert unsigned == [] and failures == ["answered HTTP 401"]
    signer = RequestSigner(Keyring([KEY_A]), clock=FakeClock(T0), rng=random.Random(3))
    signed = await ask_peers(http, [served.peer()], PATH, ask(signer=signer), now=lambda: T0)
    assert signed == [TagAnswer("server", parse_digest(DIGEST), T0 - 5)]


# -- the client ------------------------------------------------------------------------------


@dataclass
class ScriptedPeer:
    """A peer endpoint that answers every tag request with ``body`` (or never, when silent)."""

    body: bytes = b""
    status: int = 200
    silent: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    host: str = ""

    async def start(self) -> ScriptedPeer:
        app = web.Application()
        app.router.add_get("/p2p/v1/tags/{rest:.+}", self._answer)
        self.runner, self.host = await start_app(app)
        return self

    async def _answer(self, request: web.Request) -> web.Response:
        if self.silent:
            await self.release.wait()
        return web.Response(body=self.body, status=self.status, content_type="application/json")

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[list[ScriptedPeer]]:
    peers: list[ScriptedPeer] = []
    yield peers
    for peer in peers:
        await peer.stop()


def answer(digest: str, confirmed_at: float) -> bytes:
    return json.dumps({"digest": digest, "confirmed_at": confirmed_at}).encode()


async def test_every_peer_is_asked_at_once_and_answers_come_freshest_first(
        http: aiohttp.ClientSession, scripted: list[ScriptedPeer]) -> None:
    other = "sha256:" + "d" * 64
    for body in (answer(DIGEST, T0 - 100), answer(other, T0 - 10), b"", answer(DIGEST, T0 - 50)):
        scripted.append(await ScriptedPeer(body, status=404 if not body else 200).start())
    peers = [Peer(f"p{i}", s.host) for i, s in enumerate(scripted)]
    answers = await ask_peers(http, peers, PATH, ask(), now=lambda: T0)
    assert [(a.peer, str(a.digest), a.confirmed_at) for a in answers] == [
        ("p1", other, T0 - 10), ("p3", DIGEST, T0 - 50), ("p0", DIGEST, T0 - 100)]


async def test_silent_unreachable_and_nonsense_peers_cost_one_timeout_and_are_reported(
        http: aiohttp.ClientSession, scripted: list[ScriptedPeer]) -> None:
    scripted.append(await ScriptedPeer(silent=True).start())
    scripted.append(await ScriptedPeer(b"<html>").start())
    scripted.append(await ScriptedPeer(b"x" * 5000).start())
    scripted.append(await ScriptedPeer(answer(DIGEST, T0 - 1)).start())
    closed = await ScriptedPeer().start()
    await closed.stop()  # nothing listens there any more
    peers = [Peer(f"p{i}", s.host) for i, s in enumerate([*scripted, closed])]
    failures: dict[str, str] = {}
    started = time.monotonic()
    answers = await ask_peers(http, peers, PATH, ask(timeout_s=0.5), now=lambda: T0,
                              on_failure=failures.__setitem__)
    assert time.monotonic() - started < 2.0
    assert [a.peer for a in answers] == ["p3"]
    assert sorted(failures) == ["p0", "p1", "p2", "p4"]
    assert "TimeoutError" in failures["p0"]
    assert failures["p1"] == "answer is not JSON"
    assert "too big" in failures["p2"]


@pytest.mark.parametrize(("body", "why"), [
    (b"[]", "not a JSON object"),
    (b'{"confirmed_at": 1}', "no digest"),
    (b'{"digest": "sha256:xyz", "confirmed_at": 1}', "invalid digest"),
    (b'{"digest": "' + DIGEST.encode() + b'"}', "no valid confirmed_at"),
    (b'{"digest": "' + DIGEST.encode() + b'", "confirmed_at": true}', "no valid confirmed_at"),
    (b'{"digest": "' + DIGEST.encode() + b'", "confirmed_at": NaN}', "no valid confirmed_at"),
    (b'{"digest": "' + DIGEST.encode() + b'", "confirmed_at": "1"}', "no valid confirmed_at"),
    (answer(DIGEST, T0 + 31), "in the future"),
])
def test_answers_are_read_strictly(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_answer("p", body, now=T0, max_skew_s=30.0)


def test_an_answer_within_the_clock_skew_is_taken() -> None:
    assert parse_answer("p", answer(DIGEST, T0 + 29), now=T0, max_skew_s=30.0).confirmed_at \
        == T0 + 29


def test_the_path_is_built_only_from_valid_names() -> None:
    assert tag_path("localhost:5000", "org/app", "v1.2_3") == \
        "/p2p/v1/tags/localhost:5000/org/app/v1.2_3"
    for registry, repository, tag in [("a/b", "app", "v1"), ("docker.io", "App", "v1"),
                                      ("docker.io", "app", "v 1")]:
        with pytest.raises(RegistryError):
            tag_path(registry, repository, tag)


# -- whom to ask -----------------------------------------------------------------------------


def member(name: str, *, zone: str = "", rtt: float | None = None, load: float = 0.0,
           status: MemberStatus = MemberStatus.ALIVE, http_addr: str = "h:1") -> Member:
    return Member(name=name, gossip_addr=("127.0.0.1", 0), http_addr=http_addr, zone=zone,
                  incarnation=0, status=status, load=load, rtt_estimate_s=rtt)


def test_the_nearest_live_peers_are_asked_same_zone_first_then_by_round_trip() -> None:
    members = [
        member("self", zone="a"),
        member("far", zone="b", rtt=0.001),
        member("near", zone="a", rtt=0.010),
        member("nearer", zone="a", rtt=0.002),
        member("unknown-rtt", zone="a"),
        member("suspect", zone="a", rtt=0.001, status=MemberStatus.SUSPECT),
        member("dead", zone="a", rtt=0.001, status=MemberStatus.DEAD),
        member("no-http", zone="a", rtt=0.001, http_addr=""),
    ]
    names = [p.name for p in nearest_peers(members, "self", limit=10)]
    assert names == ["nearer", "near", "unknown-rtt", "far", "suspect"]
    assert [p.name for p in nearest_peers(members, "self", limit=3)] == \
        ["nearer", "near", "unknown-rtt"]
    demoted = [p.name for p in nearest_peers(members, "self", limit=3, demoted={"nearer"})]
    assert demoted == ["near", "unknown-rtt", "far"]
