"""Loopback clusters for the p2p tests: mirror nodes wired by ``P2P``, and upstreams that count.

Owns: ``CountingUpstream`` (a tiny registry on 127.0.0.1:0 serving blobs with ``Range``, counting
blob GETs per digest, optionally holding a blob back at a byte offset until a gate opens),
``Cluster`` / ``ClusterNode`` (mirror nodes sharing a ``StaticCluster``; each node is the real
registry app plus the peer endpoint on its own port) and ``FakePeer`` (a peer endpoint that lies
or dies mid-stream). Test-only code.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from p2preg.clock import FakeClock, MonotonicClock
from p2preg.config import Config
from p2preg.gossip.wire import Keyring
from p2preg.oci.digest import Digest
from p2preg.p2p.membership import Membership, StaticCluster, StaticMembership
from p2preg.p2p.node_glue import P2P, P2PConfig
from p2preg.p2p.source import PeerClientConfig
from p2preg.pull.mirror import MirrorContentSource, create_mirror
from p2preg.registry.app import create_registry_app
from p2preg.registry.context import RegistryContext
from p2preg.registry.namespace import namespace_middleware
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager
from tests.upstream.fakes import StepClock

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def payload(size: int, seed: int = 1) -> tuple[bytes, Digest]:
    data = random.Random(seed).randbytes(size)
    return data, Digest("sha256", hashlib.sha256(data).hexdigest())


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def _version_check(request: web.Request) -> web.Response:
    return web.json_response({})


@dataclass
class CountingUpstream:
    """A registry that serves ``blobs`` and ``manifests`` under any repository and counts every
    blob GET and every manifest request (``manifest_requests[(method, reference)]``)."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_gets: Counter[str] = field(default_factory=Counter)
    #: digest -> the first byte of every blob GET (the bytes sent: size - start, each)
    blob_starts: dict[str, list[int]] = field(default_factory=dict)
    #: reference (tag or digest) -> (media type, body)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    manifest_requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: digest -> (offset, gate): bytes from ``offset`` on wait until ``gate`` is set.
    holds: dict[str, tuple[int, asyncio.Event]] = field(default_factory=dict)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    host: str = ""

    def add(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_manifest(self, tag: str, media_type: str, body: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[tag] = self.manifests[digest] = (media_type, body)
        return digest

    async def start(self) -> CountingUpstream:
        app = web.Application()
        app.router.add_get("/v2/", _version_check)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/v2/{name:.+}/manifests/{reference}", self._manifest)
        self.runner, self.host = await start_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _manifest(self, request: web.Request) -> web.Response:
        reference = request.match_info["reference"]
        self.manifest_requests[(request.method, reference)] += 1
        found = self.manifests.get(reference)
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]},
                                     status=404)
        media_type, body = found
        headers = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
        return web.Response(body=body, content_type=media_type, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "x"}]},
                                     status=404)
        if request.method == "GET":
            self.blob_gets[digest] += 1
        start = 0
        rng = request.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        if request.method == "GET":
            self.blob_starts.setdefault(digest, []).append(start)
        response = web.StreamResponse(status=206 if rng else 200)
        response.content_length = len(data) - start
        response.headers["Docker-Content-Digest"] = digest
        if rng:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        hold = self.holds.get(digest)
        if hold is not None and start < hold[0]:
            await response.write(data[start:hold[0]])
            self.held.set()
            await hold[1].wait()
            start = hold[0]
        await response.write(data[start:])
        await response.write_eof()
        return response


@dataclass
class ClusterNode:
    name: str
    host: str
    blobs: BlobStore
    meta: MetadataStore
    mirror: MirrorContentSource
    p2p: P2P
    membership: Membership
    runner: web.AppRunner
    http: aiohttp.ClientSession
    on_stop: Callable[[], Awaitable[None]] | None = None

    async def get_blob(self, repo: str, digest: str, **kwargs: Any) -> tuple[int, bytes]:
        url = f"http://{self.host}/v2/{repo}/blobs/{digest}"
        async with self.http.get(url, **kwargs) as resp:
            return resp.status, await resp.read()

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()
        await self.p2p.close()
        await self.mirror.close()
        self.meta.close()
        if self.on_stop is not None:
            await self.on_stop()


async def start_node(
    root: Path,
    name: str,
    upstream_url: str,
    membership_for: Callable[[str], Awaitable[Membership]],
    *,
    keyring: Keyring | None,
    clock: FakeClock,
    idle_timeout_s: float = 5.0,
    seed: int = 0,
    p2p_config: P2PConfig | None = None,
) -> ClusterNode:
    """A mirror node with the p2p path; ``membership_for(http_host)`` runs once it is bound."""
    layout = StoreLayout(root / name)
    layout.ensure()
    blobs = BlobStore(layout)
    blobs.recover()
    wall = StepClock(start=1_700_000_000.0)
    meta = MetadataStore(layout.db_path, clock=wall)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host = f"127.0.0.1:{sock.getsockname()[1]}"
    membership = await membership_for(host)
    config = replace(p2p_config or P2PConfig(),
                     client=PeerClientConfig(idle_timeout_s=idle_timeout_s))
    p2p = P2P(membership, blobs, keyring=keyring, config=config, clock=clock,
              rng=random.Random(seed))
    mirror = create_mirror(Config(upstream=(f"docker.io={upstream_url}",)), blobs, meta,
                           clock=MonotonicClock(), wall_clock=wall, rng=random.Random(7),
                           peer_sources=p2p.peer_sources)
    p2p.attach(mirror)
    ctx = RegistryContext(blobs=blobs, meta=meta,
                          uploads=UploadManager(layout, blobs, meta, wall), clock=wall,
                          read_only=True, content=mirror)
    app = create_registry_app(ctx, middlewares=[namespace_middleware])
    app.add_routes(p2p.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await p2p.start()
    return ClusterNode(name, host, blobs, meta, mirror, p2p, membership, runner,
                       aiohttp.ClientSession(auto_decompress=False))


@dataclass
class Cluster:
    """Mirror nodes in one process sharing a ``StaticCluster``; docker.io is ``upstream_url``."""

    root: Path
    upstream_url: str
    keyring: Keyring | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    static: StaticCluster = field(default_factory=StaticCluster)
    nodes: list[ClusterNode] = field(default_factory=list)
    idle_timeout_s: float = 5.0
    #: The p2p settings of every node added (``P2PConfig(swarm=False)``: the sequential path).
    p2p_config: P2PConfig = field(default_factory=P2PConfig)

    async def add_node(self, name: str, *, keyring: Keyring | None = None) -> ClusterNode:
        async def membership_for(host: str) -> Membership:
            return self.static.add(name, host)

        node = await start_node(self.root, name, self.upstream_url, membership_for,
                                keyring=keyring or self.keyring, clock=self.clock,
                                idle_timeout_s=self.idle_timeout_s, seed=len(self.nodes),
                                p2p_config=self.p2p_config)
        self.nodes.append(node)
        return node

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def membership(self, name: str) -> StaticMembership:
        return StaticMembership(self.static, name)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


@dataclass
class FakePeer:
    """A peer endpoint that serves ``data`` for any digest, with a scripted misbehaviour.

    ``die_at``: the connection is cut after that many bytes of the body. ``stall_at``: after
    that many bytes nothing more is sent until the test ends (a silent peer). ``corrupt``: every
    byte is flipped (a lying peer). Records the ``Range`` header of every request.
    """

    data: bytes
    die_at: int | None = None
    stall_at: int | None = None
    corrupt: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    ranges: list[str | None] = field(default_factory=list)
    runner: web.AppRunner | None = None
    host: str = ""
    on_request: Callable[[web.Request], None] | None = None

    async def start(self) -> FakePeer:
        app = web.Application()
        app.router.add_get("/p2p/v1/blobs/{digest}", self._serve)
        self.runner, self.host = await start_app(app)
        return self

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        data = bytes(b ^ 0xFF for b in self.data) if self.corrupt else self.data
        response = web.StreamResponse(status=206 if rng else 200)
        response.content_length = len(data) - start
        if rng:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if self.stall_at is not None:
            await response.write(data[start:self.stall_at])
            await self.released.wait()
            return response
        if self.die_at is not None:
            await response.write(data[start:self.die_at])
            assert request.transport is not None
            request.transport.abort()  # the peer dies mid-stream
            return response
        await response.write(data[start:])
        await response.write_eof()
        return response
