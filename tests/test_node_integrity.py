"""Bit rot in a cluster of whole mirror nodes: a rotten copy is reported by the first peer that
gets it, re-verified by its holder at once, dropped, and never served to a second peer."""

from __future__ import annotations

import aiohttp

from p2preg.node import Node
from p2preg.oci.digest import parse_digest
from tests.p2p.harness import CountingUpstream, payload
from tests.support.bitrot import flip_bit
from tests.support.cluster import until
from tests.test_node_p2p import OCI_MANIFEST, get_manifest, pulled_on_first

REPO = "library/app"


def served_bytes(node: Node) -> int:
    """Blob answers the node's peer endpoint gave (whole blobs, pieces, in-progress fills)."""
    assert node.p2p is not None
    served = node.p2p.server.stats.served
    return served["local"] + served["piece"] + served["in_progress"]


def owner_first(cluster: list[Node], digest: str) -> list[Node]:
    """The cluster with the digest's owner first: a blob pulled there is held by it alone."""
    return sorted(cluster, key=lambda n: not n.p2p.plan(parse_digest(digest)).self_is_owner)


async def get(http: aiohttp.ClientSession, node: Node, digest: str) -> tuple[int, bytes | None]:
    """Status and body of a blob GET; body None when the node aborted the response."""
    async with http.get(f"{node.url}/v2/{REPO}/blobs/{digest}") as response:
        try:
            return response.status, await response.read()
        except aiohttp.ClientPayloadError:
            return response.status, None


async def test_a_flipped_byte_is_served_to_one_peer_at_most_then_dropped(
    mirror_nodes: list[Node], counting_upstream: CountingUpstream
) -> None:
    data, _ = payload(3 * 1024 * 1024, seed=31)
    digest = counting_upstream.add(data)
    holder, first, second = owner_first(mirror_nodes, digest)
    assert holder.p2p is not None and holder.scrubber is not None
    name = holder.gossip.node_name
    async with aiohttp.ClientSession() as http:
        assert await get(http, holder, digest) == (200, data)  # the owner: only it holds it
        await until(lambda: all(
            any(m.name == name for m in n.gossip.holders(digest)) for n in (first, second)))
        path = holder.layout.blob_path(parse_digest(digest))
        flip_bit(path, offset=1_000_000)

        _status, body = await get(http, first, digest)
        assert body in (None, data)  # never the rotten bytes as a complete body
        # n1 told n0, which re-hashed its copy, deleted it and advertised the drop.
        await until(lambda: not path.exists())
        await until(lambda: all(
            not any(m.name == name for m in n.gossip.holders(digest)) for n in (first, second)))

        assert served_bytes(holder) > 0  # n1 got (some of) the rotten copy from the holder
        assert await get(http, second, digest) == (200, data)
        assert await get(http, first, digest) == (200, data)
    assert first.p2p is not None and first.p2p.penalties.wrong_bytes_total >= 1
    # The second peer never received a wrong byte (from the holder or anyone): no penalty.
    assert second.p2p is not None and second.p2p.penalties.wrong_bytes_total == 0
    assert holder.scrubber.blobs.corrupt_total["peer_report"] == 1
    assert not holder.layout.quarantine_path(parse_digest(digest)).exists()  # mirror: deleted
    # n0 fetches it again on demand.
    async with aiohttp.ClientSession() as http:
        assert await get(http, holder, digest) == (200, data)


async def test_the_scrub_drops_a_rotten_copy_and_the_metric_counts_it(
    mirror_nodes: list[Node], counting_upstream: CountingUpstream
) -> None:
    data, _ = payload(512 * 1024, seed=32)
    digest = counting_upstream.add(data)
    holder, other, _ = owner_first(mirror_nodes, digest)
    assert holder.scrubber is not None
    name = holder.gossip.node_name
    async with aiohttp.ClientSession() as http:
        assert await get(http, holder, digest) == (200, data)
        await until(lambda: any(m.name == name for m in other.gossip.holders(digest)))
        flip_bit(holder.layout.blob_path(parse_digest(digest)))
        report = await holder.scrubber.scrub_pass()
        assert report.corrupt == 1
        await until(lambda: not any(m.name == name for m in other.gossip.holders(digest)))
        async with http.get(f"{holder.url}/metrics") as response:
            text = await response.text()
        assert 'p2preg_scrub_corrupt_total{found_by="scrub"} 1.0' in text
        assert await get(http, holder, digest) == (200, data)  # refetched on demand


async def test_an_unsigned_wrong_bytes_report_is_refused_before_any_hashing(
    mirror_nodes: list[Node], counting_upstream: CountingUpstream
) -> None:
    data, _ = payload(64 * 1024, seed=33)
    digest = counting_upstream.add(data)
    holder = mirror_nodes[0]
    assert holder.scrubber is not None
    async with aiohttp.ClientSession() as http:
        assert await get(http, holder, digest) == (200, data)
        url = f"{holder.url}/p2p/v1/blobs/{digest}/suspect"
        async with http.post(url, headers={"P2preg-Node": "intruder"}) as response:
            assert response.status == 401
            assert (await response.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert holder.scrubber.stats.reports == 0


async def test_a_mirror_verifies_a_cached_manifest_on_read_and_fetches_a_rotten_one_again(
    mirror_nodes: list[Node], counting_upstream: CountingUpstream
) -> None:
    holder = mirror_nodes[0]
    assert holder.scrubber is not None
    async with aiohttp.ClientSession() as http:
        body, digest = await pulled_on_first(http, mirror_nodes, counting_upstream, seed=34)
        flip_bit(holder.layout.blob_path(parse_digest(digest)), offset=3)
        assert await get_manifest(http, holder, digest) == (200, OCI_MANIFEST, body)
    assert holder.scrubber.blobs.corrupt_total["read"] == 1
    assert counting_upstream.manifest_requests[("GET", digest)] == 2  # fetched again, once
