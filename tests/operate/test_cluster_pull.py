"""Preheat and fan-out on a real 3-node cluster in front of a real Distribution origin whose own
log counts the blob GETs; the CLI runs as a subprocess, as an operator would run it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from p2preg.node import Node
from p2preg.oci import mediatypes
from p2preg.oci.digest import parse_digest
from tests.operate.conftest import Origin, run_cli

pytestmark = pytest.mark.clients

ACCEPT = {"Accept": f"{mediatypes.OCI_MANIFEST}, {mediatypes.OCI_INDEX}"}


def key_file(tmp_path: Path) -> str:
    return str(tmp_path / "cluster.keys")  # written by mirror_cluster


async def client_pull(node: Node, origin: Origin) -> None:
    """What docker does through its mirror: the manifest by tag, then every blob."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.url}/v2/library/busybox/manifests/latest",
                            headers=ACCEPT) as resp:
            assert resp.status == 200
        for digest in origin.image.blob_digests:
            async with http.get(f"{node.url}/v2/library/busybox/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == origin.image.read(digest)


async def test_preheat_fills_every_node_and_later_pulls_cause_no_origin_gets(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    ran = await run_cli("preheat", "busybox:latest", "--wait", "--url", cluster[0].url,
                        "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 0, ran.err
    for node in cluster:
        assert f"{node.gossip.node_name}: done in" in ran.out  # plain lines: not a TTY
        for digest in origin.image.blob_digests:
            assert node.operate.status.blobs.has(parse_digest(digest)), (node.url, digest)
    assert origin.blob_gets() == dict.fromkeys(origin.image.blob_digests, 1)  # each blob once

    for node in cluster:
        await client_pull(node, origin)
    assert origin.blob_gets() == dict.fromkeys(origin.image.blob_digests, 1)  # 0 more GETs


async def test_preheat_of_named_nodes_only_touches_them(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    ran = await run_cli("preheat", "docker.io/library/busybox:latest", "--nodes", "n1",
                        "--wait", "--url", cluster[0].url,
                        "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 0, ran.err
    held = {n.gossip.node_name: all(n.operate.status.blobs.has(parse_digest(d))
                                    for d in origin.image.blob_digests) for n in cluster}
    assert held == {"n0": False, "n1": True, "n2": False}


async def test_unknown_node_names_are_refused_naming_the_members(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    ran = await run_cli("preheat", "busybox", "--nodes", "n1,nope", "--url", cluster[0].url,
                        "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 2
    assert "nope" in ran.err and "n0, n1, n2" in ran.err


async def test_a_node_that_dies_during_a_scheduled_pull_is_reported_not_waited_for(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    started = time.monotonic()
    cli = asyncio.create_task(run_cli(
        "fanout", "busybox:latest", "--lead-s", "3", "--url", cluster[0].url,
        "--cluster-key-file", key_file(tmp_path)))
    coordinator = cluster[0].operate.coordinator
    while not coordinator.pulls or any(
            run.state == "starting" for p in coordinator.pulls.values()
            for run in p.nodes.values()):
        await asyncio.sleep(0.02)  # every node accepted the pull, due in 3 s
    pull = next(iter(coordinator.pulls.values()))
    assert pull.nodes["n2"].state == "scheduled"
    await cluster[2].stop()  # n2 dies before the start instant
    ran = await cli
    assert ran.code == 1
    assert "nodes failed: n2 (" in ran.err
    assert pull.nodes["n2"].state == "failed" and pull.nodes["n2"].error
    assert {pull.nodes[n].state for n in ("n0", "n1")} == {"done"}
    assert time.monotonic() - started < 30


async def test_preheat_names_a_dead_member_asked_for_and_why(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    await cluster[2].stop()
    ran = await run_cli("preheat", "busybox:latest", "--nodes", "n0,n1,n2", "--wait",
                        "--url", cluster[0].url, "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 1
    assert "failed on 1 node(s): n2 (" in ran.err
    assert "n0: done in" in ran.out and "n1: done in" in ran.out


async def test_requests_without_a_valid_signature_are_refused(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    wrong = tmp_path / "wrong.keys"
    wrong.write_text("ab" * 32 + "\n")
    ran = await run_cli("preheat", "busybox", "--url", cluster[0].url,
                        "--cluster-key-file", str(wrong))
    assert ran.code == 2 and "401" in ran.err
    body = {"id": "x1", "image": "busybox", "repository": "library/busybox",
            "reference": "latest", "platforms": [], "at": None}
    async with aiohttp.ClientSession() as http:
        for url, payload in ((cluster[0].url + "/_p2preg/v1/cluster-pulls", {"image": "bb"}),
                             (cluster[0].peer_url + "/p2p/v1/pulls", body)):
            async with http.post(url, json=payload) as resp:
                assert resp.status == 401
                assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert cluster[0].operate.pulls.jobs == {}
    assert cluster[0].operate.coordinator.pulls == {}
    assert origin.blob_gets() == dict.fromkeys(origin.image.blob_digests, 0)


async def test_fanout_reports_every_node_and_the_origin_sent_each_blob_once_per_run(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    out = tmp_path / "fanout.json"
    plot = tmp_path / "fanout.png"
    ran = await run_cli("fanout", "busybox:latest", "--repeat", "2", "--evict-first",
                        "--lead-s", "1", "--json", str(out), "--plot", str(plot),
                        "--url", cluster[0].url, "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 0, ran.err
    report = json.loads(out.read_text())
    image_bytes = sum(len(origin.image.read(d)) for d in origin.image.blob_digests)
    assert len(report["runs"]) == 2
    for run, raw in zip(report["runs"], report["cluster_pulls"], strict=True):
        assert run["ok_hosts"] == 3 and run["failed_hosts"] == {}
        assert run["image_bytes"] == image_bytes
        assert set(run["host_s"]) == {"n0", "n1", "n2"}
        assert 0 < run["host_p50_s"] <= run["host_p99_s"] <= run["all_done_s"]
        assert run["origin_bytes"] == image_bytes  # from the nodes' own upstream counters
        assert run["origin_egress_x_image"] == 1.0
        from_peers = sum(n["progress"]["counters"]["from_peer"] for n in raw["nodes"])
        assert sum(run["uploaded_bytes_per_host"].values()) == from_peers  # every byte counted
        assert from_peers >= 2 * image_bytes - 4096  # two nodes (nearly all) from a peer
    # the origin's own log agrees: every blob left it once per run (evicted in between)
    assert origin.blob_gets() == dict.fromkeys(origin.image.blob_digests, 2)
    assert origin.blob_bytes_sent() == 2 * image_bytes
    assert "time to all" in ran.out and "n2" in ran.out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_an_image_the_origin_lacks_fails_on_every_node_saying_why(
    tmp_path: Path, origin: Origin, cluster: list[Node]
) -> None:
    ran = await run_cli("preheat", "nosuch:v1", "--wait", "--url", cluster[0].url,
                        "--cluster-key-file", key_file(tmp_path))
    assert ran.code == 1
    assert "failed on 3 node(s): n0 (MANIFEST_UNKNOWN: " in ran.err
    assert ran.err.count("UNKNOWN") == 3
