"""The status page: its JSON on a live node, its login, and the page itself in a real headless
Chromium against a live node during a transfer (a slow link in front of a real Distribution)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from p2preg.oci import mediatypes
from p2preg.oci.digest import parse_digest
from p2preg.registry.htpasswd import make_htpasswd_line
from tests.conftest import require_tool
from tests.operate.conftest import Origin
from tests.support.chromium import chromium_page
from tests.support.cluster import CLUSTER_KEY, mirror_cluster, until

pytestmark = pytest.mark.clients

RATE_BYTES_S = 96 * 1024
ACCEPT = {"Accept": f"{mediatypes.OCI_MANIFEST}, {mediatypes.OCI_INDEX}"}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"


@contextlib.asynccontextmanager
async def slow_link(origin_host: str) -> AsyncIterator[str]:
    """A TCP relay to the origin whose answers trickle at ``RATE_BYTES_S`` per connection."""
    host, port = origin_host.rsplit(":", 1)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(16 * 1024 if slow else 65536):
                dst.write(data)
                await dst.drain()
                if slow:
                    await asyncio.sleep(len(data) / RATE_BYTES_S)
        dst.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))
        for coro in (pipe(reader, up_w, False), pipe(up_r, writer, True)):
            task = asyncio.get_running_loop().create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_blob(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return len(await resp.read())


async def test_the_page_shows_members_and_a_live_transfer_with_no_console_errors(
    tmp_path: Path, origin: Origin
) -> None:
    require_tool("chromium")
    payload = origin.image.images[0].layers[-1]  # the 3 MiB layer
    names = ("n0", "n1", "n2")
    async with slow_link(origin.registry.host) as link, \
            mirror_cluster(tmp_path, link, names=names) as (n0, n1, n2):
        async with aiohttp.ClientSession() as http:  # a cached image to show: manifest, config
            async with http.get(f"{n1.url}/v2/library/busybox/manifests/latest",
                                headers=ACCEPT) as resp:
                assert resp.status == 200
            config = origin.image.images[0].config.digest
            async with http.get(f"{n1.url}/v2/library/busybox/blobs/{config}") as resp:
                assert resp.status == 200
        blob_path = f"/v2/library/busybox/blobs/{payload.digest}"
        clients = [asyncio.create_task(read_blob(n0.url + blob_path))]
        await until(lambda: any(f.received > 0 for f in n0.operate.status.fetcher()
                                .fills_in_flight()))
        for node in (n1, n2):  # both from n0, the peer that is filling it
            clients.append(asyncio.create_task(read_blob(node.url + blob_path)))
        # n1's fill has bytes from its source (a swarm fill is in flight before any answer)
        await until(lambda: any(f.received > 0 for f in n1.operate.status.fetcher()
                                .fills_in_flight()))
        await until(lambda: all(n in n1.gossip.coordinates() for n in names))
        try:
            async with chromium_page() as page:
                await page.navigate(n1.url + "/ui")
                await page.wait_for("document.body && document.body.dataset.loaded === 'yes' && "
                                    "document.querySelectorAll('#fills tr.fill').length > 0 && "
                                    "document.querySelector('#fills').innerText.includes('peer') "
                                    "&& document.querySelectorAll('#map circle').length === 3")
                await asyncio.sleep(1.5)  # one more refresh: a moved bar
                members = await page.evaluate("document.querySelector('#members').innerText")
                fills = await page.evaluate("document.querySelector('#fills').innerText")
                await page.navigate(n0.url + "/ui")  # the sender: its uploads to n1, n2
                await page.wait_for("document.body && document.body.dataset.loaded === 'yes' "
                                    "&& document.querySelectorAll('#uploads tr.upload').length "
                                    "> 0")
                uploads = await page.evaluate("document.querySelector('#uploads').innerText")
                await page.navigate(n1.url + "/ui")
                await page.wait_for("document.body && document.body.dataset.loaded === 'yes' "
                                    "&& document.querySelectorAll('#map circle').length === 3")
                title = await page.evaluate("document.querySelector('#node-name').innerText")
                width = await page.evaluate(
                    "document.querySelector('#fills tr.fill .bar span').style.width")
                shot = tmp_path / "status-page.png"
                await page.screenshot(shot)
                errors = page.console_errors()
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    assert title == "n1"
    assert all(n in members for n in names) and members.count("alive") == 3
    assert payload.digest.removeprefix("sha256:")[:12] in fills and "peer" in fills
    assert 0.0 < float(width.rstrip("%")) < 100.0
    assert "n1" in uploads or "n2" in uploads  # the peers reading from n0 (by pieces)
    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_STATUS_SCREENSHOT"):
        shutil.copy(shot, SCREENSHOT)


async def test_status_json_shows_the_cluster_and_never_the_key(
    tmp_path: Path, origin: Origin
) -> None:
    async with mirror_cluster(tmp_path, origin.registry.host, names=("n0", "n1")) as (n0, _), \
            aiohttp.ClientSession() as http:
        async with http.get(f"{n0.url}/v2/library/busybox/blobs/"
                            f"{origin.image.blob_digests[0]}") as resp:
            assert resp.status == 200
            await resp.read()
        first = parse_digest(origin.image.blob_digests[0])
        await until(lambda: n0.operate.status.blobs.has(first))  # committed after the body
        await until(lambda: "n1" in n0.gossip.coordinates())  # after a probe's ack
        bodies = []
        for path in ("/ui", "/_p2preg/v1/status", "/_p2preg/v1/cache"):
            async with http.get(n0.url + path) as resp:
                assert resp.status == 200
                bodies.append(await resp.text())
        async with http.get(n0.url + "/_p2preg/v1/status") as resp:
            status = await resp.json()
        async with http.get(n0.url + "/_p2preg/v1/cache") as resp:
            cache = await resp.json()
    assert all(CLUSTER_KEY not in body for body in bodies)
    assert "http://" not in bodies[1] + bodies[2]  # no upstream URL
    assert [m["name"] for m in status["members"]] == ["n0", "n1"]
    assert all(m["coordinate"] is not None for m in status["members"])
    assert status["node"] == {"name": "n0", "mode": "mirror", "time": status["node"]["time"]}
    assert status["bytes"]["received_bytes_by_source"]["upstream"] > 0
    assert status["bytes"]["cache_misses"] >= 1
    assert [b["digest"] for b in cache["blobs"]] == [origin.image.blob_digests[0]]


async def test_with_htpasswd_the_page_asks_for_the_v2_login(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("alice", "s3cret", rounds=4) + "\n")
    node = Node(Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path / "d"),
                       htpasswd=str(htpasswd)))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/ui", "/_p2preg/v1/status", "/_p2preg/v1/cache"):
                async with http.get(node.url + path) as resp:
                    assert resp.status == 401, path
                    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
                async with http.get(node.url + path,
                                    auth=aiohttp.BasicAuth("alice", "s3cret")) as resp:
                    assert resp.status == 200, path
    finally:
        await node.stop()
