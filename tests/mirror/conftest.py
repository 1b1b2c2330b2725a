"""A mirror-mode registry app on loopback over real stores, pointed at fake or real upstreams."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from p2preg.clock import Clock
from p2preg.config import Config
from p2preg.fetch.singleflight import BlobFetcher
from p2preg.pull.mirror import MirrorContentSource, create_mirror
from p2preg.registry.app import create_registry_app
from p2preg.registry.context import RegistryContext
from p2preg.registry.metrics import RegistryMetrics
from p2preg.registry.namespace import namespace_middleware
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager
from p2preg.upstream.config import UpstreamConfig
from tests.upstream.fakes import FakeUpstream, StepClock


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def error_codes(self) -> list[str]:
        import json

        return [e["code"] for e in json.loads(self.body)["errors"]]

    def error_message(self) -> str:
        import json

        return str(json.loads(self.body)["errors"][0]["message"])


@dataclass
class MirrorNode:
    base_url: str
    blobs: BlobStore
    meta: MetadataStore
    content: MirrorContentSource
    fetcher: BlobFetcher
    metrics: RegistryMetrics
    wall: StepClock
    http: aiohttp.ClientSession
    runner: web.AppRunner
    # (method, path with query, status, Docker-Content-Digest) of every response
    served: list[tuple[str, str, int, str]]

    @property
    def host(self) -> str:
        return self.base_url.removeprefix("http://")

    def served_ok(self, method: str, fragment: str) -> int:
        """How many ``method`` requests whose path holds ``fragment`` got a 200."""
        return sum(1 for m, p, s, _ in self.served if m == method and fragment in p and s == 200)

    def served_manifest(self, digest: str) -> bool:
        """True when a manifest GET (by tag or digest) answered 200 with ``digest``."""
        return any(m == "GET" and "/manifests/" in p and s == 200 and d == digest
                   for m, p, s, d in self.served)

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.http.request(method, self.base_url + path, **kwargs) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()
        await self.content.close()
        self.meta.close()


MirrorFactory = Callable[..., Awaitable[MirrorNode]]


@pytest.fixture
async def mirror_factory(tmp_path: Path) -> AsyncIterator[MirrorFactory]:
    """``await mirror_factory({"docker.io": url, ...}, **options)`` starts a mirror node."""
    nodes: list[MirrorNode] = []

    async def factory(
        upstreams: Mapping[str, str | UpstreamConfig],
        *,
        clock: Clock | None = None,
        tag_max_stale_s: float = 3600.0,
    ) -> MirrorNode:
        root = tmp_path / f"mirror{len(nodes)}"
        layout = StoreLayout(root)
        layout.ensure()
        blobs = BlobStore(layout)
        blobs.recover()
        wall = StepClock(start=1_700_000_000.0)
        meta = MetadataStore(layout.db_path, clock=wall)
        metrics = RegistryMetrics()
        specs = tuple(f"{name}={u.url if isinstance(u, UpstreamConfig) else u}"
                      for name, u in upstreams.items())
        content = create_mirror(Config(upstream=specs, tag_max_stale_s=tag_max_stale_s,
                                       data_dir=str(root)),
                                blobs, meta, metrics=metrics, clock=clock or StepClock(),
                                wall_clock=wall, rng=random.Random(7))
        fetcher = content.fetcher
        ctx = RegistryContext(blobs=blobs, meta=meta,
                              uploads=UploadManager(layout, blobs, meta, wall), clock=wall,
                              read_only=True, content=content, listing=content.listing)
        served: list[tuple[str, str, int, str]] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            served.append((request.method, request.path_qs, response.status,
                           response.headers.get("Docker-Content-Digest", "")))
            return response

        app = create_registry_app(ctx, middlewares=[record, namespace_middleware])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        node = MirrorNode(f"http://127.0.0.1:{port}", blobs, meta, content, fetcher, metrics,
                          wall, aiohttp.ClientSession(auto_decompress=False), runner, served)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.stop()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.stop()
