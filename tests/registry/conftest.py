"""Fixtures that run a real registry node app on 127.0.0.1 (port 0) over a temp directory.

``registry`` is one running node with an ``aiohttp.ClientSession``; ``registry_factory`` starts
more (read-only mirrors, a custom ``ContentSource``, extra middlewares, a smaller manifest limit)
and stops them all at teardown. Other suites (the mirror) reuse these: ``start_registry`` is a
plain coroutine too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDictProxy
from yarl import URL

from p2preg.clock import FakeClock
from p2preg.oci.manifest import MAX_MANIFEST_BYTES
from p2preg.registry.app import create_registry_app
from p2preg.registry.content import ContentSource
from p2preg.registry.context import RegistryContext
from p2preg.registry.fileslice import SEND_PROGRESS_TIMEOUT_KEY
from p2preg.registry.httpserver import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEPALIVE_TIMEOUT_S,
    RegistryRunner,
)
from p2preg.registry.observability import AccessLogger, Observability
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

START_TIME = 1_700_000_000.0


@dataclass(frozen=True)
class Reply:
    """A finished response: status, headers and the whole body."""

    method: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class RegistryNode:
    """A running registry app and a client session pointed at it."""

    root: Path
    layout: StoreLayout
    ctx: RegistryContext
    runner: web.AppRunner
    base_url: str
    http: aiohttp.ClientSession
    clock: FakeClock

    def url(self, path: str) -> str:
        return self.base_url + path

    async def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Reply:
        """Send a request and read the whole response.

        ``raw=True`` sends ``path`` byte for byte (no dot-segment removal, no re-quoting), to
        test what a hostile client can put in a URL.
        """
        kwargs.setdefault("allow_redirects", False)
        url = URL(self.url(path), encoded=True) if raw else self.url(path)
        async with self.http.request(method, url, **kwargs) as response:
            body = await response.read()
            return Reply(method, response.status, response.headers, body)

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()
        self.ctx.meta.close()


async def start_registry(
    root: Path,
    *,
    read_only: bool = False,
    content: ContentSource | None = None,
    middlewares: Sequence[Middleware] = (),
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
    observability: Observability | None = None,
    send_progress_timeout_s: float | None = None,
) -> RegistryNode:
    """Open a store under ``root`` and serve a registry app for it on 127.0.0.1, port 0."""
    clock = FakeClock(START_TIME)
    layout = StoreLayout(root)
    layout.ensure()
    blobs = BlobStore(layout)
    blobs.recover()
    meta = MetadataStore(layout.db_path, clock=clock)
    uploads = UploadManager(layout, blobs, meta, clock)
    uploads.recover()
    ctx = RegistryContext(
        blobs=blobs,
        meta=meta,
        uploads=uploads,
        clock=clock,
        read_only=read_only,
        max_manifest_bytes=max_manifest_bytes,
        content=content,  # type: ignore[arg-type]
    )
    if observability is not None:
        middlewares = [observability.middleware, *middlewares]
    app = create_registry_app(ctx, middlewares=middlewares)
    if observability is not None:
        observability.setup(app)
    if send_progress_timeout_s is not None:
        app[SEND_PROGRESS_TIMEOUT_KEY] = send_progress_timeout_s
    runner = RegistryRunner(
        app,
        header_timeout_s=header_timeout_s,
        keepalive_timeout=keepalive_timeout_s,
        access_log_class=AccessLogger,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    http = aiohttp.ClientSession(auto_decompress=False)
    return RegistryNode(root, layout, ctx, runner, f"http://127.0.0.1:{port}", http, clock)


RegistryFactory = Callable[..., Awaitable[RegistryNode]]


@pytest.fixture
async def registry_factory(tmp_path: Path) -> AsyncIterator[RegistryFactory]:
    """Start nodes with ``await registry_factory(**options)``; each gets its own store."""
    nodes: list[RegistryNode] = []

    async def factory(**options: Any) -> RegistryNode:
        node = await start_registry(tmp_path / f"node{len(nodes)}", **options)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.stop()


@pytest.fixture
async def registry(registry_factory: RegistryFactory) -> RegistryNode:
    """One writable registry node on an empty store."""
    return await registry_factory()
