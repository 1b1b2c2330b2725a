"""Bit rot in registry mode: rotten content is reported and never served as if good.

A manifest is checked on every read; a blob is checked by the scrub (``storage/scrub.py``). Either
way the rotten file leaves ``blobs/`` for ``quarantine/``, the API answers an OCI error saying so
(never the wrong bytes, whole or in a range), and pushing the content again repairs it.
"""

from __future__ import annotations

import random

from p2preg.clock import FakeClock
from p2preg.oci.digest import parse_digest
from p2preg.storage.scrub import MIB, Scrubber
from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, push_blob, push_image, put_manifest
from tests.support.bitrot import flip_bit

REPO = "team/app"


async def test_a_rotten_manifest_is_never_served_and_a_push_repairs_it(
    registry: RegistryNode,
) -> None:
    digest, body = await push_image(registry, REPO)
    blobs = registry.ctx.blobs
    flip_bit(blobs.layout.blob_path(parse_digest(digest)), offset=5)

    for reference in ("latest", digest):
        for method in ("GET", "HEAD"):
            reply = await registry.request(method, f"/v2/{REPO}/manifests/{reference}")
            error = assert_oci_error(reply, 404, "MANIFEST_UNKNOWN")
            if method == "GET":
                assert "quarantined" in error["message"]
    assert blobs.corrupt_total["read"] == 1
    assert blobs.layout.quarantine_path(parse_digest(digest)).exists()

    assert (await put_manifest(registry, REPO, "latest", body)).status == 201
    reply = await registry.request("GET", f"/v2/{REPO}/manifests/latest")
    assert reply.status == 200 and reply.body == body


async def test_a_rotten_blob_found_by_the_scrub_is_an_error_whole_or_in_a_range(
    registry: RegistryNode,
) -> None:
    data = random.Random(3).randbytes(300_000)
    digest = await push_blob(registry, REPO, data)
    blobs = registry.ctx.blobs
    flip_bit(blobs.layout.blob_path(parse_digest(digest)), offset=100_000)
    scrubber = Scrubber(blobs, FakeClock(), rate_bytes_s=64 * MIB, interval_s=60)

    assert (await scrubber.scrub_pass()).corrupt == 1

    url = f"/v2/{REPO}/blobs/{digest}"
    for method, headers in [("GET", {}), ("GET", {"Range": "bytes=99990-100010"}), ("HEAD", {})]:
        reply = await registry.request(method, url, headers=headers)
        error = assert_oci_error(reply, 404, "BLOB_UNKNOWN")
        if method == "GET":
            assert "quarantined" in error["message"]
    assert blobs.corrupt_total["scrub"] == 1

    assert await push_blob(registry, REPO, data) == digest  # the client's re-push repairs it
    reply = await registry.request("GET", url)
    assert reply.status == 200 and reply.body == data
