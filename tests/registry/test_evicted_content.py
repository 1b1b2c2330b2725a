"""A row says "the repository has it"; only the file says "this node holds the bytes".

When eviction removed a file, the API answers the right "unknown" code, never a 500.
"""

from __future__ import annotations

from p2preg.oci.digest import parse_digest
from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, digest_of, push_image


async def test_manifest_whose_file_was_evicted_is_manifest_unknown(registry: RegistryNode) -> None:
    digest, _ = await push_image(registry, "evict/me")
    assert registry.ctx.blobs.delete(parse_digest(digest))
    for reference in ("latest", digest):
        reply = await registry.request("GET", f"/v2/evict/me/manifests/{reference}")
        assert_oci_error(reply, 404, "MANIFEST_UNKNOWN")


async def test_layer_whose_file_was_evicted_is_blob_unknown(registry: RegistryNode) -> None:
    await push_image(registry, "evict/layer", seed=b"L")
    layer = digest_of(b"layer-one-L")
    assert registry.ctx.blobs.delete(parse_digest(layer))
    reply = await registry.request("GET", f"/v2/evict/layer/blobs/{layer}")
    assert_oci_error(reply, 404, "BLOB_UNKNOWN")
