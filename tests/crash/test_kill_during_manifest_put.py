"""SIGKILL a node during manifest PUTs, at many slightly different instants, and restart it.

Specification: after each crash and restart on the same data dir, a manifest whose body was not
completely sent is not served at all (by digest nor by tag); a manifest whose body was completely
sent is served either exactly or not at all (404), never partially and never under a tag that
points at nothing; every tag the node lists resolves to the exact bytes pushed for it; and the PUT
can be redone to completion.

The crash instants are chosen from a seeded generator: how much of the body is sent (none, half,
all but one byte, all) and how long to wait before the kill.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.crash._push import get_bytes, push_blob, put_manifest, sha256_digest
from tests.support.images import build_image
from tests.support.node import P2pregNode, running_node

REPO = "crash/manifest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ATTEMPTS = 12
SEED = 20261126
BODY_FRACTIONS = (0.0, 0.5, -1, 1.0)  # -1: all but the last byte
KILL_DELAYS_S = (0.0, 0.001, 0.003, 0.01, 0.03)
PADDING_BYTES = 256 * 1024  # a large body, so "half sent" really is on the wire in pieces
TIMEOUT = aiohttp.ClientTimeout(total=60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[P2pregNode]:
    with running_node(tmp_path / "data") as started:
        yield started


def manifest_variant(base: dict[str, Any], attempt: int, rng: random.Random) -> bytes:
    """The image's manifest with an annotation that makes each attempt a new digest."""
    doc = dict(base)
    doc["annotations"] = {
        "test.attempt": str(attempt),
        "test.padding": rng.randbytes(PADDING_BYTES // 2).hex(),
    }
    return json.dumps(doc, sort_keys=True).encode()


async def put_then_kill(
    node: P2pregNode, reference: str, body: bytes, sent_bytes: int, delay_s: float
) -> None:
    """Send a PUT's headers and ``sent_bytes`` of ``body`` on a raw socket, wait, SIGKILL."""
    host, port = node.host.rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"PUT /v2/{REPO}/manifests/{reference} HTTP/1.1\r\n"
        f"Host: {node.host}\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:sent_bytes])
    await writer.drain()
    if delay_s:
        await asyncio.sleep(delay_s)
    node.kill9()
    writer.close()
    await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def assert_served_exactly_or_not_at_all(
    session: aiohttp.ClientSession, node: P2pregNode, reference: str, body: bytes, complete: bool
) -> bool:
    """GET ``reference``: 404, or (only if the body was complete) exactly ``body``; found?"""
    status, served = await get_bytes(
        session, f"{node.url}/v2/{REPO}/manifests/{reference}", accept=OCI_MANIFEST
    )
    if status == 404:
        return False
    assert complete, f"{reference}: an incomplete manifest PUT is served ({status})"
    assert status == 200
    assert served == body
    return True


async def assert_every_listed_tag_is_whole(
    session: aiohttp.ClientSession, node: P2pregNode, pushed: dict[str, bytes]
) -> None:
    status, raw = await get_bytes(session, f"{node.url}/v2/{REPO}/tags/list")
    if status == 404:  # no tag committed yet: the repository may not exist
        return
    assert status == 200
    for tag in json.loads(raw).get("tags") or []:
        status, served = await get_bytes(
            session, f"{node.url}/v2/{REPO}/manifests/{tag}", accept=OCI_MANIFEST
        )
        assert status == 200, f"tag {tag} is listed but its manifest is not served"
        assert served == pushed[tag]


async def test_manifest_put_killed_at_any_instant_is_all_or_nothing(
    node: P2pregNode, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    image = build_image(tmp_path / "image", seed=40)
    platform_image = image.images[0]
    base = json.loads(image.read(platform_image.manifest.digest))
    pushed: dict[str, bytes] = {}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for digest in image.blob_digests:
            assert await push_blob(session, node.url, REPO, image.read(digest)) == digest

        for attempt in range(ATTEMPTS):
            body = manifest_variant(base, attempt, rng)
            digest = sha256_digest(body)
            tag = f"attempt-{attempt}"
            fraction = BODY_FRACTIONS[attempt % len(BODY_FRACTIONS)]
            sent = len(body) - 1 if fraction == -1 else int(len(body) * fraction)
            complete = sent == len(body)
            pushed[tag] = body

            await put_then_kill(node, tag, body, sent, rng.choice(KILL_DELAYS_S))
            node.start()

            found_by_tag = await assert_served_exactly_or_not_at_all(
                session, node, tag, body, complete
            )
            found_by_digest = await assert_served_exactly_or_not_at_all(
                session, node, digest, body, complete
            )
            assert found_by_digest or not found_by_tag, "a tag points at a missing manifest"
            await assert_every_listed_tag_is_whole(session, node, pushed)

            assert await put_manifest(session, node.url, REPO, tag, body, OCI_MANIFEST) == digest
            status, served = await get_bytes(
                session, f"{node.url}/v2/{REPO}/manifests/{digest}", accept=OCI_MANIFEST
            )
            assert (status, served) == (200, body)
