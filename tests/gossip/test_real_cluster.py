"""Real node processes on 127.0.0.1: discovery through --join and through mDNS, failure detection.

Each test runs five ``python -m p2preg.gossip.service`` processes with short protocol intervals,
asks them over ``GET /p2p/v1/members`` how they see the cluster, and stops every process by its
PID. Each cluster gets its own random cluster key, so concurrent runs of these tests on one
machine (mDNS on loopback is shared) can never merge into one cluster.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.netns import GossipProcess, wait_until

FAST_FLAGS = [
    "--probe-interval-s", "0.2",
    "--probe-timeout-s", "0.1",
    "--gossip-interval-s", "0.05",
    "--push-pull-interval-s", "2",
    "--seed-interval-s", "1",
    "--suspicion-mult", "3",
    "--leave-timeout-s", "0.3",
]  # fmt: skip
N = 5
CONVERGE_S = 30.0

Start = Callable[..., list[GossipProcess]]


@pytest.fixture
def start_nodes(tmp_path: Path) -> Iterator[Start]:
    """``start_nodes(indexes, *flags)``: launch those nodes at once, return them when ready."""
    key_file = tmp_path / "cluster.keys"
    key_file.write_text(secrets.token_hex(32) + "\n")
    token = secrets.token_hex(2)
    nodes: list[GossipProcess] = []

    def start(indexes: range, *extra: str) -> list[GossipProcess]:
        batch = []
        for index in indexes:
            name = f"real-{token}-{index}"
            args = [
                "--gossip-listen", "127.0.0.1:0",
                "--http-listen", "127.0.0.1:0",
                "--node-name", name,
                "--cluster-key-file", str(key_file),
                "--random-seed", str(index),
                *FAST_FLAGS,
                *extra,
            ]  # fmt: skip
            node = GossipProcess(args, log_path=str(tmp_path / f"{name}.log"))
            nodes.append(node)
            batch.append(node)
            node.launch()
        for node in batch:
            node.wait_ready()
        return batch

    try:
        yield start
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.stop()
        assert not any(node.alive() for node in nodes)


def _all_see(nodes: list[GossipProcess], expected: dict[str, str]) -> Callable[[], bool]:
    return lambda: all(node.statuses() == expected for node in nodes)


def _names(nodes: list[GossipProcess]) -> list[str]:
    return [n.name for n in nodes]


def _start_joined_cluster(start_nodes: Start) -> list[GossipProcess]:
    """Node 0 first, then nodes 1-4 at once, each told only node 0's gossip address."""
    first = start_nodes(range(1))
    rest = start_nodes(range(1, N), "--join", first[0].info["gossip"])
    return first + rest


def test_five_processes_find_each_other_through_join(start_nodes: Start) -> None:
    nodes = _start_joined_cluster(start_nodes)
    everyone_alive = dict.fromkeys(_names(nodes), "alive")
    wait_until(_all_see(nodes, everyone_alive), CONVERGE_S, what="5 nodes all alive everywhere")
    doc = nodes[0].members()
    me = next(m for m in doc["members"] if m["name"] == nodes[0].name)
    assert me["address"] == nodes[0].info["gossip"]
    assert me["advertise"] == nodes[0].info["http"]
    assert doc["self"] == nodes[0].name


def test_five_processes_find_each_other_through_mdns_on_loopback(start_nodes: Start) -> None:
    nodes = start_nodes(range(N), "--mdns", "--mdns-interface", "127.0.0.1")
    everyone_alive = dict.fromkeys(_names(nodes), "alive")
    wait_until(_all_see(nodes, everyone_alive), CONVERGE_S, what="5 mDNS nodes all alive")


def test_a_sigkilled_process_is_seen_dead_and_a_terminated_one_left(start_nodes: Start) -> None:
    nodes = _start_joined_cluster(start_nodes)
    wait_until(
        _all_see(nodes, dict.fromkeys(_names(nodes), "alive")), CONVERGE_S, what="convergence"
    )

    victim, survivors = nodes[-1], nodes[:-1]
    victim.kill()  # SIGKILL: no leave message, SWIM must detect it
    assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
    expected = dict.fromkeys(_names(survivors), "alive") | {victim.name: "dead"}
    took_s = wait_until(_all_see(survivors, expected), 20.0, what="the killed node seen dead")
    # Suspicion timeout with these flags is at most 6 x 3 x log10(5) x 0.2 s = 2.5 s, plus probe
    # rounds and dissemination; allow generous slack for a loaded CI machine.
    assert took_s < 15.0

    leaver, rest = survivors[-1], survivors[:-1]
    assert leaver.stop() == 0  # SIGTERM: graceful leave, clean exit
    expected = dict.fromkeys(_names(rest), "alive") | {victim.name: "dead", leaver.name: "left"}
    wait_until(_all_see(rest, expected), 20.0, what="the stopped node seen left")


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--join", "nope"], "--join 'nope': expected HOST:PORT"),
        (["--mdns"], "--mdns needs at least one --mdns-interface"),
    ],
)
def test_the_runner_exits_2_with_a_clear_message_on_bad_flags(
    flags: list[str], complaint: str
) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "p2preg.gossip.service", "--gossip-listen", "127.0.0.1:0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert complaint in out.stderr
    assert out.stdout == ""
