"""The peer endpoint and ``PeerBlobSource`` against each other on loopback."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp
import pytest
from aiohttp import web

from p2preg.clock import FakeClock
from p2preg.fetch.singleflight import BlobFetcher
from p2preg.fetch.sources import SourceStream
from p2preg.gossip.wire import Keyring
from p2preg.oci.digest import Digest
from p2preg.p2p.auth import NODE_HEADER, ROUTE_HEADER, RequestSigner, RequestVerifier
from p2preg.p2p.routing import ROLE_HOLDER, ROLE_OWNER, Candidate, Peer
from p2preg.p2p.server import P2PServer
from p2preg.p2p.source import BlobOrigin, PeerBlobSource, PeerError
from p2preg.registry.content import BlobContent
from p2preg.registry.ranges import RangeSpec
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.upstream.errors import UpstreamNotFound
from tests.p2p.harness import KEY_A, KEY_B, payload, start_app

T0 = 1_700_000_000.0


@dataclass
class Served:
    server: P2PServer
    blobs: BlobStore
    fetcher: BlobFetcher
    host: str
    http: aiohttp.ClientSession
    owner_calls: list[tuple[str, BlobOrigin]]
    seeds: int = 0

    def source(self, role: str = ROLE_HOLDER, *, key: bytes | None = None,
               clock: FakeClock | None = None, origin: BlobOrigin | None = None
               ) -> PeerBlobSource:
        self.seeds += 1
        signer = None if key is None else RequestSigner(
            Keyring([key]), clock=clock or FakeClock(T0), rng=random.Random(self.seeds))
        return PeerBlobSource(self.http, Candidate(Peer("server", self.host), role),
                              node_name="client", signer=signer, origin=origin)

    async def get(self, digest: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
        url = f"http://{self.host}/p2p/v1/blobs/{digest}"
        async with self.http.get(url, headers=headers) as resp:
            body = await resp.read()
            return resp.status, (json.loads(body) if resp.status >= 400 else {})


async def read(source: PeerBlobSource, digest: Digest, offset: int = 0) -> bytes:
    stream = await source.open(digest, offset)
    async with stream:
        return b"".join([c async for c in stream.chunks()])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    yield await _serve(tmp_path, keyring=None)


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Served]:
    yield await _serve(tmp_path, keyring=Keyring([KEY_A, KEY_B]))


_running: list[tuple[web.AppRunner, aiohttp.ClientSession, BlobFetcher]] = []


async def _serve(tmp_path: Path, keyring: Keyring | None) -> Served:
    blobs = BlobStore(StoreLayout(tmp_path / "store"))
    blobs.recover()
    fetcher = BlobFetcher(blobs)
    calls: list[tuple[str, BlobOrigin]] = []

    async def owner_fill(digest: Digest, origin: BlobOrigin, byte_range: RangeSpec | None,
                         want_body: bool) -> BlobContent:
        calls.append((str(digest), origin))
        raise AssertionError("not asked as owner in these tests")

    verifier = None if keyring is None else RequestVerifier(keyring, clock=FakeClock(T0))
    server = P2PServer(blobs, fills=fetcher.in_flight, owner_fill=owner_fill, verifier=verifier)
    runner, host = await start_app(server.app())
    http = aiohttp.ClientSession()
    _running.append((runner, http, fetcher))
    return Served(server, blobs, fetcher, host, http, calls)


@pytest.fixture(autouse=True)
async def _cleanup() -> AsyncIterator[None]:
    yield
    while _running:
        runner, http, fetcher = _running.pop()
        await http.close()
        await fetcher.close()
        await runner.cleanup()


class HeldSource:
    """An in-memory upstream stand-in: sends ``data[:hold]``, waits for ``gate``, sends the rest."""

    kind = "upstream"
    name = "held upstream"

    def __init__(self, data: bytes, hold: int) -> None:
        self.data, self.hold = data, hold
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    async def open(self, digest: Digest, offset: int) -> SourceStream:
        return _HeldStream(self, offset)


class _HeldStream:
    def __init__(self, source: HeldSource, offset: int) -> None:
        self.source, self.offset = source, offset
        self.size: int | None = len(source.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        s = self.source
        yield s.data[self.offset:s.hold]
        s.holding.set()
        await s.gate.wait()
        yield s.data[s.hold:]

    async def __aenter__(self) -> _HeldStream:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None


# -- committed blobs ---------------------------------------------------------------------------


async def test_a_committed_blob_is_served_whole(served: Served) -> None:
    data, digest = payload(300_000)
    await served.blobs.put_bytes(data, digest)
    assert await read(served.source(), digest) == data
    assert served.server.stats.served["local"] == 1


async def test_a_resume_asks_for_the_rest_with_range(served: Served) -> None:
    data, digest = payload(300_000)
    await served.blobs.put_bytes(data, digest)
    stream = await served.source().open(digest, 123_456)
    async with stream:
        assert stream.size == len(data)
        assert b"".join([c async for c in stream.chunks()]) == data[123_456:]


async def test_head_gives_the_size_without_a_body(served: Served) -> None:
    data, digest = payload(1000)
    await served.blobs.put_bytes(data, digest)
    async with served.http.head(f"http://{served.host}/p2p/v1/blobs/{digest}",
                                headers={NODE_HEADER: "client"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        assert resp.headers["Docker-Content-Digest"] == str(digest)


# -- what a node lacks -------------------------------------------------------------------------


async def test_a_node_without_the_blob_answers_404_at_once_and_fetches_nothing(
        served: Served) -> None:
    _, digest = payload(10)
    with pytest.raises(UpstreamNotFound):
        await served.source(ROLE_HOLDER).open(digest, 0)
    assert served.server.stats.served["not_found"] == 1
    assert served.fetcher.started_total == 0 and served.owner_calls == []


async def test_an_owner_request_without_its_upstream_is_a_bad_request(served: Served) -> None:
    _, digest = payload(10)
    status, body = await served.get(str(digest), {NODE_HEADER: "c", ROUTE_HEADER: ROLE_OWNER})
    assert status == 400
    assert body["errors"][0]["detail"]["reason"] == "no_origin"  # type: ignore[index]
    assert served.owner_calls == []


@pytest.mark.parametrize(("path_digest", "headers", "status", "code", "reason"), [
    ("sha256:xyz", {NODE_HEADER: "c"}, 400, "DIGEST_INVALID", "bad_digest"),
    ("sha256:" + "ab" * 32, {}, 400, "UNSUPPORTED", "not_a_peer"),
    ("sha256:" + "ab" * 32, {NODE_HEADER: "c", ROUTE_HEADER: "boss"}, 400, "UNSUPPORTED",
     "bad_route"),
    ("sha256:" + "ab" * 32, {NODE_HEADER: "c", "Range": "bytes=a-b"}, 416, "RANGE_INVALID",
     "bad_range"),
])
async def test_bad_requests_get_oci_errors_and_are_counted(
        served: Served, path_digest: str, headers: dict[str, str], status: int, code: str,
        reason: str) -> None:
    got_status, body = await served.get(path_digest, headers)
    assert got_status == status
    assert body["errors"][0]["code"] == code  # type: ignore[index]
    assert served.server.stats.rejected[reason] == 1


async def test_a_bad_range_for_a_held_blob_names_its_size(served: Served) -> None:
    data, digest = payload(300)
    await served.blobs.put_bytes(data, digest)
    url = f"http://{served.host}/p2p/v1/blobs/{digest}"
    async with served.http.get(url, headers={NODE_HEADER: "c", "Range": "bytes=a-b"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */300"


# -- signatures over HTTP --------------------------------------------------------------------


async def test_a_signed_request_with_a_current_or_rotated_key_is_served(keyed: Served) -> None:
    data, digest = payload(5000)
    await keyed.blobs.put_bytes(data, digest)
    assert await read(keyed.source(key=KEY_A), digest) == data
    assert await read(keyed.source(key=KEY_B), digest) == data


@pytest.mark.parametrize(("how", "reason"), [
    ("unsigned", "missing"), ("wrong key", "bad_signature"), ("stale", "stale"),
    ("replayed", "replayed"),
])
async def test_refused_signatures_are_401_oci_errors_and_counted(
        keyed: Served, how: str, reason: str) -> None:
    data, digest = payload(100)
    await keyed.blobs.put_bytes(data, digest)
    path = f"/p2p/v1/blobs/{digest}"
    base = {NODE_HEADER: "client", ROUTE_HEADER: ROLE_HOLDER}
    if how == "unsigned":
        headers = base
    else:
        key = bytes(range(50, 82)) if how == "wrong key" else KEY_A
        clock = FakeClock(T0 - 120.0 if how == "stale" else T0)
        signer = RequestSigner(Keyring([key]), clock=clock, rng=random.Random(9))
        headers = {**base, **signer.sign("GET", path, base)}
    if how == "replayed":
        assert (await keyed.get(str(digest), headers))[0] == 200
    status, body = await keyed.get(str(digest), headers)
    assert status == 401
    error = body["errors"][0]  # type: ignore[index]
    assert error["code"] == "UNAUTHORIZED" and error["detail"]["reason"] == reason
    assert keyed.server.stats.rejected[reason] == 1


# -- blobs still arriving --------------------------------------------------------------------


async def test_a_blob_still_arriving_is_streamed_as_it_comes(served: Served) -> None:
    data, digest = payload(400_000)
    upstream = HeldSource(data, hold=150_000)
    fill = served.fetcher.fill(digest, [upstream])
    await upstream.holding.wait()
    stream = await served.source().open(digest, 0)
    async with stream:
        assert stream.size == len(data)
        chunks = stream.chunks()
        first = await chunks.__anext__()  # arrives while the upstream is still held
        assert data.startswith(first) and 0 < len(first) <= 150_000
        upstream.gate.set()
        rest = b"".join([c async for c in chunks])
    assert first + rest == data
    await fill.wait()
    assert served.server.stats.served["in_progress"] == 1


async def test_a_fill_that_turns_out_wrong_aborts_the_peer_response(served: Served) -> None:
    data, digest = payload(400_000)
    wrong = data[:-1] + bytes([data[-1] ^ 1])  # only the very last byte differs
    upstream = HeldSource(wrong, hold=200_000)
    fill = served.fetcher.fill(digest, [upstream])
    await upstream.holding.wait()
    stream = await served.source().open(digest, 0)
    received = b""
    with pytest.raises(PeerError, match=r"broke off|sent"):
        async with stream:
            async for chunk in stream.chunks():
                received += chunk
                upstream.gate.set()
    assert len(received) < len(data)  # the last byte never left the server
    assert fill.error is not None and fill.error.wrong_bytes
    assert not served.blobs.has(digest)
