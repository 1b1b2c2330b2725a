"""Three "hosts" (network namespaces on one bridge) find each other over mDNS.

Runs as root only (``require_root``). The namespaces, their veths and the bridge are created by
``tests.support.netns.NetnsLab`` with addresses in 10.213.0.0/24 that exist only inside them, and
are deleted at the end even on failure. Every node binds mDNS to its namespace's own address and
nothing else; processes are stopped by PID before the namespaces go away.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.support.netns import (
    GossipProcess,
    NetnsLab,
    existing_netns,
    members_from_inside,
    wait_until,
)

pytestmark = pytest.mark.netns

FAST_FLAGS = [
    "--probe-interval-s", "0.2",
    "--probe-timeout-s", "0.1",
    "--gossip-interval-s", "0.05",
    "--push-pull-interval-s", "2",
    "--seed-interval-s", "1",
    "--leave-timeout-s", "0.3",
]  # fmt: skip


def test_three_namespaced_hosts_find_each_other_over_mdns_on_a_bridge(tmp_path: Path) -> None:
    require_root()
    require_tool("ip")
    key_file = tmp_path / "cluster.keys"
    key_file.write_text(secrets.token_hex(32) + "\n")
    nodes: list[GossipProcess] = []
    with NetnsLab(3) as lab:
        try:
            for i, host in enumerate(lab.hosts):
                args = [
                    "--gossip-listen", f"{host.address}:0",
                    "--http-listen", f"{host.address}:0",
                    "--node-name", f"ns{i}-{lab.token}",
                    "--mdns", "--mdns-interface", host.address,
                    "--cluster-key-file", str(key_file),
                    "--random-seed", str(i),
                    *FAST_FLAGS,
                ]  # fmt: skip
                node = GossipProcess(args, log_path=str(tmp_path / f"ns{i}.log"), host=host)
                nodes.append(node)
                node.launch()
            for node in nodes:
                node.wait_ready()
                assert node.info["gossip"].startswith("10.213.0.")

            expected = {node.name: "alive" for node in nodes}

            def everyone_sees_everyone() -> bool:
                docs = members_from_inside(lab.hosts[0], [node.url for node in nodes])
                return all(
                    doc is not None and {m["name"]: m["status"] for m in doc["members"]} == expected
                    for doc in docs
                )

            wait_until(
                everyone_sees_everyone,
                30.0,
                interval_s=0.5,
                what="3 namespaced nodes all alive everywhere",
            )
            doc = nodes[0].members()
            addresses = sorted(m["address"].rsplit(":", 1)[0] for m in doc["members"])
            assert addresses == sorted(host.address for host in lab.hosts)
        finally:
            for node in nodes:
                node.terminate()
            for node in nodes:
                node.stop()
    assert not [name for name in existing_netns() if lab.token in name]


def test_the_lab_deletes_its_namespaces_when_the_test_body_fails() -> None:
    require_root()
    require_tool("ip")
    with pytest.raises(RuntimeError, match="test body failed"), NetnsLab(2) as lab:
        assert len([name for name in existing_netns() if lab.token in name]) == 3
        raise RuntimeError("test body failed")
    assert not [name for name in existing_netns() if lab.token in name]
