"""A cluster serving TLS fetches from its peers over verified HTTPS (``--tls-cert`` +
``--peer-ca``), and a peer whose certificate it cannot verify is not used (the upstream is)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from p2preg.config import Config
from p2preg.node import Node
from tests.auth.certs import SelfSigned, make_self_signed
from tests.p2p.harness import CountingUpstream, payload
from tests.test_node_p2p import REPO, until


@asynccontextmanager
async def tls_cluster(tmp_path: Path, upstream: CountingUpstream, cert: SelfSigned,
                      peer_ca: str | None) -> AsyncIterator[list[Node]]:  # fmt: skip
    key_file = tmp_path / "cluster.keys"
    key_file.write_text("1e" * 32 + "\n")
    nodes: list[Node] = []
    try:
        for name in ("n0", "n1"):
            join = ()
            if nodes:
                host, port = nodes[0].gossip.bound_address[:2]  # type: ignore[union-attr]
                join = (f"{host}:{port}",)
            node = Node(Config(
                mode="mirror", listen="127.0.0.1:0", data_dir=str(tmp_path / name),
                upstream=(f"docker.io=http://{upstream.host}",), gossip_listen="127.0.0.1:0",
                join=join, node_name=name, cluster_key_file=str(key_file),
                tls_cert=str(cert.cert), tls_key=str(cert.key), peer_ca=peer_ca,
            ))  # fmt: skip
            await node.start()
            nodes.append(node)
        alive: Callable[[Node], int] = lambda n: sum(  # noqa: E731
            m.status.value == "alive" for m in n.gossip.members())  # type: ignore[union-attr]
        await until(lambda: all(alive(n) == 2 for n in nodes))
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()


async def pull_twice(tmp_path: Path, peer_ca: str | None) -> tuple[CountingUpstream, list[Node]]:
    cert = make_self_signed(tmp_path / "tls")
    client_tls = ssl.create_default_context(cafile=str(cert.cert))
    upstream = await CountingUpstream().start()
    data, _ = payload(2 * 1024 * 1024, seed=21)
    digest = upstream.add(data)
    try:
        async with tls_cluster(tmp_path, upstream, cert, peer_ca) as (first, second), \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as http:
            assert first.url.startswith("https://")
            for node in (first, second):
                async with http.get(f"{node.url}/v2/{REPO}/blobs/{digest}") as response:
                    assert response.status == 200 and await response.read() == data
                if node is first:  # the second pull starts once the second host knows
                    await until(lambda: any(m.name == "n0" for m in
                                            second.gossip.holders(digest)))  # type: ignore[union-attr]
            return upstream, [first, second]
    finally:
        await upstream.stop()


async def test_peers_are_fetched_from_over_verified_https(tmp_path: Path) -> None:
    upstream, (_, second) = await pull_twice(tmp_path, peer_ca=str(tmp_path / "tls/server.crt"))
    assert sum(upstream.blob_gets.values()) == 1  # the second host took it from the first
    assert second.p2p is not None and second.p2p.stats.fills_with_peers == 1
    assert second.p2p.penalties.failures_total == 0


async def test_a_peer_whose_certificate_is_not_trusted_is_not_used(tmp_path: Path) -> None:
    # No --peer-ca: the system store does not know the self-signed certificate.
    upstream, (_, second) = await pull_twice(tmp_path, peer_ca=None)
    assert sum(upstream.blob_gets.values()) == 2  # the second host had to ask the upstream
    assert second.p2p is not None and second.p2p.penalties.failures_total >= 1
