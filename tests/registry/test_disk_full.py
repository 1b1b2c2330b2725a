"""A full disk in registry mode: ``507 Insufficient Storage`` with the OCI error body naming the
free space, never a 500; nothing half-written stays, and the next push that fits works."""

from __future__ import annotations

import random
from pathlib import Path

from tests.registry.conftest import start_registry
from tests.registry.helpers import assert_oci_error, digest_of, push_blob
from tests.support.smallfs import small_tmpfs

FS_BYTES = 8 * 1024 * 1024
TOO_BIG = random.Random(41).randbytes(12 * 1024 * 1024)
FITS = random.Random(42).randbytes(1024 * 1024)


def assert_insufficient_storage(reply) -> None:  # type: ignore[no-untyped-def]
    error = assert_oci_error(reply, 507, "UNKNOWN")
    assert "disk is full" in error["message"]
    assert isinstance(error["detail"]["free_bytes"], int)


async def test_a_push_that_does_not_fit_is_507_and_leaves_room_for_the_next(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "fs", FS_BYTES) as root:
        node = await start_registry(root / "store")
        try:
            digest = digest_of(TOO_BIG)
            monolithic = await node.request(
                "POST", f"/v2/lib/app/blobs/uploads/?digest={digest}", data=TOO_BIG)
            assert_insufficient_storage(monolithic)

            started = await node.request("POST", "/v2/lib/app/blobs/uploads/",
                                         headers={"Content-Length": "0"})
            assert started.status == 202
            location = started.headers["Location"]
            chunk = await node.request(
                "PATCH", location, data=TOO_BIG,
                headers={"Content-Type": "application/octet-stream"})
            assert_insufficient_storage(chunk)

            # Nothing of the failed pushes is left in tmp/: a blob that fits goes in.
            assert list((root / "store" / "tmp").iterdir()) == []
            fits = await push_blob(node, "lib/app", FITS)
            reply = await node.request("GET", f"/v2/lib/app/blobs/{fits}")
            assert reply.status == 200 and reply.body == FITS
        finally:
            await node.stop()
