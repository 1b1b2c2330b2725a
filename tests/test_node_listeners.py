"""Listeners by audience (issue 10): ``/v2`` for local clients on ``--listen`` (loopback by
default), the peer API on ``--peer-listen`` (signed when a cluster key is set, the members list
included), and no open mirror with upstream credentials. Real ``Node``s on loopback: the peer
listeners use 127.0.0.2, so each listener has an address of its own."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.cli import main
from p2preg.config import Config, ConfigError
from p2preg.gossip.http import fetch_members
from p2preg.gossip.wire import Keyring
from p2preg.listeners import is_loopback_host, open_mirror_problem
from p2preg.node import Node
from p2preg.p2p.auth import NODE_HEADER, RequestSigner
from tests.p2p.harness import CountingUpstream, payload
from tests.support.cluster import CLUSTER_KEY, mirror_cluster, until

REPO = "library/app"
PEER_HOST = "127.0.0.2"
NONCES = random.Random(5)  # one seeded source: every signed request gets a fresh nonce


@pytest.fixture
def upstream(counting_upstream: CountingUpstream) -> CountingUpstream:
    return counting_upstream


@pytest.fixture
async def cluster(tmp_path: Path, upstream: CountingUpstream) -> AsyncIterator[list[Node]]:
    async with mirror_cluster(tmp_path, upstream.host, ("n0", "n1"),
                              peer_listen=f"{PEER_HOST}:0") as nodes:
        yield nodes


def signed(path: str, key_hex: str = CLUSTER_KEY) -> dict[str, str]:
    headers = {NODE_HEADER: "tester"}
    signer = RequestSigner(Keyring([bytes.fromhex(key_hex)]), rng=NONCES)
    return {**headers, **signer.sign("GET", path, headers)}


async def status_of(http: aiohttp.ClientSession, url: str,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, await response.read()


def test_the_default_listen_address_is_loopback() -> None:
    config = Config()
    assert config.listen == "127.0.0.1:5000" and is_loopback_host(config.listen_host)
    assert config.peer_listen is None and not config.allow_open_mirror


async def test_v2_is_served_on_the_loopback_listener_and_not_on_the_peer_listener(
    cluster: list[Node],
) -> None:
    node = cluster[0]
    assert node.url.startswith("http://127.0.0.1:")
    assert node.peer_url.startswith(f"http://{PEER_HOST}:")
    async with aiohttp.ClientSession() as http:
        assert (await status_of(http, node.url + "/v2/"))[0] == 200
        for path in ("/v2/", f"/v2/{REPO}/tags/list", "/v2/_catalog", "/metrics", "/healthz"):
            status, body = await status_of(http, node.peer_url + path)
            assert status == 401, path  # unsigned: refused before anything else
            assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
            status, _ = await status_of(http, node.peer_url + path, signed(path))
            assert status == 404, path  # signed: still nothing but /p2p here


async def test_the_root_of_the_local_listener_redirects_to_the_status_page(
    cluster: list[Node],
) -> None:
    node = cluster[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url + "/", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == "/ui"
        async with http.get(node.url + "/") as response:  # what a browser shows
            assert response.status == 200 and response.url.path == "/ui"
            assert response.content_type == "text/html"
        assert (await status_of(http, node.url + "/v2/"))[0] == 200  # OCI paths unaffected
        assert (await status_of(http, node.url + "/v2"))[0] == 200
        status, _ = await status_of(http, node.peer_url + "/", signed("/"))
        assert status == 404  # the peer listener has no page


async def test_the_peer_listener_refuses_unsigned_requests_members_list_included(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    node = cluster[0]
    digest = upstream.add(payload(1024, seed=3)[0])
    members = "/p2p/v1/members"
    blob = f"/p2p/v1/blobs/{digest}"
    tag = "/p2p/v1/tags/docker.io/library/app/latest"
    async with aiohttp.ClientSession() as http:
        for path in (members, blob, tag):
            status, body = await status_of(http, node.peer_url + path, {NODE_HEADER: "x"})
            assert status == 401, path
            assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
            wrong = signed(path, key_hex="1e" * 32)
            assert (await status_of(http, node.peer_url + path, wrong))[0] == 401, path
        status, body = await status_of(http, node.peer_url + members, signed(members))
        assert status == 200
        assert sorted(m["name"] for m in json.loads(body)["members"]) == ["n0", "n1"]
        replay = signed(members)
        assert (await status_of(http, node.peer_url + members, replay))[0] == 200
        assert (await status_of(http, node.peer_url + members, replay))[0] == 401  # replayed
    # the host's own operator still lists the cluster over the loopback /v2 listener
    doc = await fetch_members(node.url)
    assert doc["self"] == "n0"


async def test_peers_fetch_blobs_from_each_other_over_the_peer_listener(
    cluster: list[Node], upstream: CountingUpstream
) -> None:
    first, second = cluster
    assert second.gossip is not None
    advertised = {m.name: m.http_addr for m in second.gossip.members()}
    assert advertised["n0"] == first.peer_url.removeprefix("http://")  # gossip carries it
    data, _ = payload(2 * 1024 * 1024, seed=21)
    digest = upstream.add(data)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{first.url}/v2/{REPO}/blobs/{digest}") as response:
            assert response.status == 200 and await response.read() == data
        await until(lambda: any(m.name == "n0" for m in second.gossip.holders(digest)))
        async with http.get(f"{second.url}/v2/{REPO}/blobs/{digest}") as response:
            assert response.status == 200 and await response.read() == data
    assert upstream.blob_gets[digest] == 1
    assert first.p2p is not None and sum(first.p2p.server.stats.served.values()) >= 1


# -- no open mirror --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen_host", "credentials", "htpasswd", "allowed", "refused"),
    [
        ("127.0.0.1", True, False, False, False),
        ("::1", True, False, False, False),
        ("localhost", True, False, False, False),
        ("0.0.0.0", True, False, False, True),
        ("::", True, False, False, True),
        ("10.0.0.12", True, False, False, True),
        ("node1.example", True, False, False, True),
        ("0.0.0.0", False, False, False, False),  # anonymous upstream access only
        ("0.0.0.0", True, True, False, False),    # logins required
        ("0.0.0.0", True, False, True, False),    # the operator said so
    ],
)
def test_open_mirror_rule(listen_host: str, credentials: bool, htpasswd: bool, allowed: bool,
                          refused: bool) -> None:
    problem = open_mirror_problem(listen_host=listen_host, has_upstream_credentials=credentials,
                                  htpasswd=htpasswd, allowed=allowed)
    assert (problem is not None) == refused
    if problem is not None:
        assert "\n" not in problem and "--allow-open-mirror" in problem
        assert "--htpasswd" in problem and "--peer-listen" in problem


def docker_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"docker.io": {"auth": "dXNlcjpzZWNyZXQ="}}}))
    return path


async def test_a_mirror_with_credentials_on_a_wildcard_address_refuses_to_start(
    tmp_path: Path,
) -> None:
    node = Node(Config(mode="mirror", listen="0.0.0.0:0", data_dir=str(tmp_path / "d"),
                       docker_config=str(docker_config(tmp_path))))
    with pytest.raises(ConfigError, match="is not a loopback address") as refused:
        await node.start()
    assert refused.value.fix is not None and "--allow-open-mirror" in refused.value.fix
    await node.stop()
    assert node.url == ""  # nothing was bound


def test_p2preg_serve_says_why_in_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"),
                 "--docker-config", str(docker_config(tmp_path))])
    assert code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if not x.startswith("{")]  # JSON lines are logs
    assert line.startswith("p2preg: configuration error: --listen (flag): 0.0.0.0 is not a "
                           "loopback")
    assert " — listen on 127.0.0.1" in line
    assert line.endswith("to serve it to the network anyway") and "secret" not in err


def test_peer_listen_needs_gossip_and_a_wildcard_peer_listener_needs_advertise() -> None:
    with pytest.raises(ConfigError, match="--peer-listen: needs --gossip-listen"):
        from p2preg.config import validate

        validate(Config(peer_listen="127.0.0.2:0"))
    with pytest.raises(ConfigError, match="wildcard --peer-listen, peers need the address"):
        validate(Config(peer_listen="0.0.0.0:5001", gossip_listen="127.0.0.1:0"))
    validate(Config(peer_listen="0.0.0.0:5001", gossip_listen="127.0.0.1:0",
                    advertise="10.0.0.12:5001"))


async def test_without_peer_listen_one_listener_serves_both_as_before(
    tmp_path: Path, upstream: CountingUpstream
) -> None:
    async with mirror_cluster(tmp_path, upstream.host, ("a", "b")) as (a, b):
        assert a.peer_url == ""
        data, _ = payload(256 * 1024, seed=22)
        digest = upstream.add(data)
        async with aiohttp.ClientSession() as http:
            for node in (a, b):
                async with http.get(f"{node.url}/v2/{REPO}/blobs/{digest}") as response:
                    assert await response.read() == data
                if node is a:
                    await until(lambda: any(m.name == "a" for m in b.gossip.holders(digest)))
        assert upstream.blob_gets[digest] == 1


async def test_the_peer_listener_drops_a_connection_without_a_request_head_in_time(
    tmp_path: Path, upstream: CountingUpstream,
) -> None:
    """--header-timeout-s bounds the peer listener too (slowloris from the network)."""
    node = Node(Config(
        mode="mirror", listen="127.0.0.1:0", data_dir=str(tmp_path / "n0"),
        upstream=(f"docker.io=http://{upstream.host}",), gossip_listen="127.0.0.1:0",
        node_name="n0", peer_listen=f"{PEER_HOST}:0", header_timeout_s=0.3,
    ))  # fmt: skip
    await node.start()
    try:
        host, port = node.peer_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /p2p/v1/blobs/x HTTP/1.1\r\nHost: x\r\n")  # never completed
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the server, nothing answered
        writer.close()
    finally:
        await node.stop()


METRICS_HOST = "127.0.0.3"


async def test_metrics_listen_serves_only_metrics_while_v2_stays_on_loopback(
    tmp_path: Path,
) -> None:
    node = Node(Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                       metrics_listen=f"{METRICS_HOST}:0"))
    await node.start()
    try:
        assert node.metrics_url.startswith(f"http://{METRICS_HOST}:")
        async with aiohttp.ClientSession() as http:
            status, body = await status_of(http, node.metrics_url + "/metrics")
            assert status == 200 and b"p2preg_http_requests_total" in body
            async with http.get(node.metrics_url + "/metrics",
                                headers={"Accept": "application/openmetrics-text"}) as resp:
                assert resp.content_type == "application/openmetrics-text"
            for path in ("/", "/v2/", "/healthz", "/ui", "/_p2preg/v1/status",
                         "/p2p/v1/members", "/metrics/"):
                assert (await status_of(http, node.metrics_url + path))[0] == 404, path
            async with http.post(node.metrics_url + "/metrics") as resp:
                assert resp.status == 405
            # /v2 and /metrics stay where they were; the scrapes were counted.
            assert (await status_of(http, node.url + "/v2/"))[0] == 200
            status, local = await status_of(http, node.url + "/metrics")
            assert status == 200 and b'route="/metrics"' in local
    finally:
        await node.stop()
    assert node.metrics_url  # and the socket is closed:
    host, port = node.metrics_url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))


@pytest.mark.parametrize(("value", "other", "message"), [
    ("0.0.0.0:9746", {}, "the wildcard 0.0.0.0:9746 would serve /metrics"),
    ("[::]:9746", {}, "the wildcard [::]:9746 would serve /metrics"),
    (":9746", {}, "expected HOST:PORT"),
    ("127.0.0.1:5000", {}, "127.0.0.1:5000 is also --listen"),
    ("10.0.0.12:5001", {"peer_listen": "10.0.0.12:5001", "gossip_listen": "127.0.0.1:0",
                        "advertise": "10.0.0.12:5001"}, "is also --peer-listen"),
])
def test_metrics_listen_refuses_a_wildcard_or_a_taken_address(
    value: str, other: dict[str, str], message: str
) -> None:
    from p2preg.config import validate

    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        validate(Config(metrics_listen=value, **other))  # type: ignore[arg-type]
    assert refused.value.option == "--metrics-listen"
    validate(Config(metrics_listen="10.0.0.12:9746"))


def test_p2preg_serve_refuses_a_wildcard_metrics_listener_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PREG_METRICS_LISTEN", "0.0.0.0:9746")
    code = main(["serve", "--data-dir", str(tmp_path / "d")])
    assert code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("{")]
    assert line.startswith("p2preg: configuration error: --metrics-listen (env "
                           "P2PREG_METRICS_LISTEN): the wildcard 0.0.0.0:9746 would serve")
    assert " — give the one address Prometheus scrapes" in line
    assert not (tmp_path / "d").exists()  # refused before anything was made
