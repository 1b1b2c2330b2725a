"""UpstreamClient against a real CNCF Distribution 2.8 origin (Debian's docker-registry)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from p2preg.oci import mediatypes
from p2preg.oci.digest import Digest, parse_digest
from p2preg.upstream.client import UpstreamClient
from p2preg.upstream.config import UpstreamConfig
from p2preg.upstream.errors import UpstreamNotFound
from tests.conftest import require_tool
from tests.support.daemons import Distribution, distribution
from tests.upstream.fakes import StepClock
from tests.upstream.seed import push_simple_image

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def origin() -> Iterator[Distribution]:
    require_tool("docker-registry")
    with distribution() as d:
        yield d


async def test_manifest_and_blob_round_trip_through_a_real_origin(origin: Distribution) -> None:
    layer = random.Random(5).randbytes(2_000_000)
    manifest_digest, body, digests = await push_simple_image(origin.url, "myorg/app", "v1",
                                                            [layer])
    client = UpstreamClient(UpstreamConfig("docker.io", origin.url), clock=StepClock(),
                            rng=random.Random(0))
    try:
        by_tag = await client.get_manifest("myorg/app", "v1")
        assert str(by_tag.digest) == manifest_digest
        assert by_tag.body == body
        assert by_tag.media_type == mediatypes.OCI_MANIFEST
        by_digest = await client.get_manifest("myorg/app", manifest_digest)
        assert by_digest.body == body
        head = await client.head_manifest("myorg/app", "v1")
        assert str(head.digest) == manifest_digest
        assert head.size == len(body)

        layer_digest = parse_digest(digests[1])
        assert await client.head_blob("myorg/app", layer_digest) == len(layer)
        async with await client.open_blob("myorg/app", layer_digest) as stream:
            assert b"".join([c async for c in stream.chunks()]) == layer
        async with await client.open_blob("myorg/app", layer_digest, offset=1_500_000) as stream:
            assert stream.size == len(layer)
            assert b"".join([c async for c in stream.chunks()]) == layer[1_500_000:]

        with pytest.raises(UpstreamNotFound):
            await client.get_manifest("myorg/app", "no-such-tag")
        with pytest.raises(UpstreamNotFound):
            await client.open_blob("myorg/app", Digest.of_bytes(b"never pushed"))
    finally:
        await client.close()
