"""Stand-in launcher for a mirror-mode node until ``p2preg serve --mode mirror`` is wired.

Owns nothing the product uses: it builds exactly what a mirror node serves (the real stores, the
real /v2 app, ``create_mirror`` and ``namespace_middleware``) on uvloop, prints
``listening on http://HOST:PORT`` and serves until SIGTERM/SIGINT. ``benchmarks/mirror.py`` uses
it only when ``p2preg.node`` does not exist yet.

Usage: ``python -m benchmarks._mirror_node --data-dir D --upstream docker.io=URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import uvloop
from aiohttp import web

from p2preg.clock import WallClock
from p2preg.config import Config
from p2preg.registry.app import create_registry_app
from p2preg.registry.context import RegistryContext
from p2preg.registry.mirror import create_mirror, namespace_middleware
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager


async def serve(data_dir: Path, upstreams: list[str], listen_host: str) -> None:
    layout = StoreLayout(data_dir)
    layout.ensure()
    blobs = BlobStore(layout)
    blobs.recover()
    wall = WallClock()
    meta = MetadataStore(layout.db_path, clock=wall)
    content = create_mirror(Config(upstream=tuple(upstreams)), blobs, meta)
    ctx = RegistryContext(
        blobs=blobs,
        meta=meta,
        uploads=UploadManager(layout, blobs, meta, wall),
        clock=wall,
        read_only=True,
        content=content,
    )
    app = create_registry_app(ctx, middlewares=[namespace_middleware])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen_host, 0).start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await content.close()
    meta.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--upstream", action="append", default=[])
    parser.add_argument("--listen-host", default="127.0.0.1")
    args = parser.parse_args()
    uvloop.run(serve(args.data_dir, args.upstream, args.listen_host))


if __name__ == "__main__":
    main()
