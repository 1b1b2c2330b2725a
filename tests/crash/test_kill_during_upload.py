"""SIGKILL a node during a 50 MB chunked blob upload, restart it on the same data dir.

Specification: after the crash the blob is not served at all (GET and HEAD of its digest answer
404 ``BLOB_UNKNOWN``; never a partial body); the upload session is either gone (404) or kept with
exactly the acknowledged bytes (``Range: 0-<acked-1>``) and then resumes to completion; a new
upload of the same blob from scratch completes too; then the node serves the exact 50 MB.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.crash._push import OCTET_STREAM, UploadSession, get_bytes, sha256_digest
from tests.support.images import random_bytes
from tests.support.node import P2pregNode, running_node

BLOB_BYTES = 50 * 1000 * 1000
CHUNK_BYTES = 5 * 1000 * 1000
ACKED_CHUNKS = 4
REPO = "crash/upload"
REDO_REPO = "crash/upload-again"
TIMEOUT = aiohttp.ClientTimeout(total=120)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random_bytes(BLOB_BYTES, seed=50)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[P2pregNode]:
    with running_node(tmp_path / "data") as started:
        yield started


def chunks_of(data: bytes, start: int) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(start, len(data), CHUNK_BYTES)]


async def send_half_a_chunk_then_hang(upload: UploadSession, chunk: bytes) -> asyncio.Task[None]:
    """Start a PATCH of ``chunk`` at the session's offset that stops after its first half; return
    the request's task once that half is on the wire (the node is then killed mid-request)."""
    half_sent = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield chunk[: len(chunk) // 2]
        half_sent.set()
        await asyncio.Event().wait()  # never sends the rest
        yield b""  # pragma: no cover

    headers = {
        "Content-Type": OCTET_STREAM,
        "Content-Range": f"{upload.offset}-{upload.offset + len(chunk) - 1}",
        "Content-Length": str(len(chunk)),
    }

    async def request() -> None:
        async with upload.session.patch(upload.location, data=body(), headers=headers) as resp:
            await resp.read()

    task = asyncio.create_task(request())
    await asyncio.wait_for(half_sent.wait(), timeout=30)
    # Give the node a moment to read what is in flight; any instant is a valid crash point.
    await asyncio.sleep(0.05)
    return task


async def assert_blob_not_served(session: aiohttp.ClientSession, base: str, digest: str) -> None:
    async with session.head(f"{base}/v2/{REPO}/blobs/{digest}") as response:
        assert response.status == 404
    async with session.get(f"{base}/v2/{REPO}/blobs/{digest}") as response:
        assert response.status == 404
        body = await response.json(content_type=None)
        assert [e["code"] for e in body["errors"]] == ["BLOB_UNKNOWN"]


@pytest.mark.parametrize("crash_point", ["between-chunks", "mid-chunk"])
async def test_upload_killed_is_never_served_and_can_be_redone(
    node: P2pregNode, blob: bytes, crash_point: str
) -> None:
    digest = sha256_digest(blob)
    acked = ACKED_CHUNKS * CHUNK_BYTES
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        upload = await UploadSession.start(session, node.url, REPO)
        for chunk in chunks_of(blob[:acked], 0):
            await upload.patch(chunk)
        assert upload.offset == acked
        in_flight = None
        if crash_point == "mid-chunk":
            in_flight = await send_half_a_chunk_then_hang(upload, blob[acked : acked + CHUNK_BYTES])

        node.kill9()
        if in_flight is not None:
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)
        node.start()
        upload.rebase(node.url)

        await assert_blob_not_served(session, node.url, digest)
        status, range_header = await upload.status()
        if status == 204:
            # The session survived the crash: it holds exactly what was acknowledged; resume it.
            assert range_header == f"0-{acked - 1}"
            for chunk in chunks_of(blob, acked):
                await upload.patch(chunk)
            assert await upload.finish(digest) == digest
        else:
            assert status == 404, "the session must be resumable or unknown"
        # Redone from scratch, in another repository, the upload completes.
        redo = await UploadSession.start(session, node.url, REDO_REPO)
        for chunk in chunks_of(blob, 0):
            await redo.patch(chunk)
        assert await redo.finish(digest) == digest

        repos = [REPO, REDO_REPO] if status == 204 else [REDO_REPO]
        for repo in repos:
            status, served = await get_bytes(session, f"{node.url}/v2/{repo}/blobs/{digest}")
            assert status == 200
            assert len(served) == BLOB_BYTES
            assert hashlib.sha256(served).hexdigest() == digest.removeprefix("sha256:")
