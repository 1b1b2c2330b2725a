"""Two nodes with one name: detected, reported, no refutation war (issue 10, item 5).

The core rules are driven by hand with alive claims (no sockets, time moved by hand); then two
real ``GossipService``s with the same name on loopback, and two real ``Node``s with default names
on one host name.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2preg.config import Config
from p2preg.gossip import GossipConfig, GossipCore, LocalRefuted, NameConflict
from p2preg.gossip.messages import Alive
from p2preg.gossip.nodeid import NODE_ID_FILE, NodeIdError, default_node_name
from p2preg.gossip.wire import MessageType, assemble_packet
from p2preg.node import Node
from tests.support.cluster import until
from tests.support.gossip import gossip_address, gossip_services

OURS = ("10.0.0.1", 7946)
THEIRS = ("10.0.0.2", 7946)
INTERVAL_S = 60.0


def core(name: str = "a", addr: tuple[str, int] = OURS) -> GossipCore:
    cfg = GossipConfig(name=name, gossip_addr=addr, name_conflict_refute_interval_s=INTERVAL_S)
    c = GossipCore(cfg, random.Random(3), now=0.0)
    c.clear_events()
    return c


def claim(incarnation: int, addr: tuple[str, int], name: str = "a") -> bytes:
    host, port = addr
    alive = Alive(incarnation, name, host, port, f"{host}:5001", "", {})
    return assemble_packet([(MessageType.ALIVE, alive.encode())], None)


def events(c: GossipCore) -> Iterator[object]:
    while (event := c.next_event()) is not None:
        yield event


def test_a_claim_of_our_name_left_by_an_old_instance_is_refuted_once_and_not_reported() -> None:
    c = core()
    c.receive_datagram(claim(5, THEIRS), THEIRS, 1.0)  # our previous run, on another address
    assert c.local_member().incarnation == 6  # refuted: the cluster moves to our address
    c.receive_datagram(claim(5, THEIRS), THEIRS, 2.0)  # the same stale claim again
    assert c.local_member().incarnation == 6
    seen = list(events(c))
    assert [type(e) for e in seen] == [LocalRefuted]


def test_a_second_live_node_is_reported_once_it_refutes_us_back_and_not_fought() -> None:
    c = core()
    c.receive_datagram(claim(0, THEIRS), THEIRS, 1.0)  # it joins with our name
    assert c.local_member().incarnation == 1
    list(events(c))
    c.receive_datagram(claim(2, THEIRS), THEIRS, 2.0)  # it refuted our refutation: it is alive
    (conflict,) = list(events(c))
    assert conflict == NameConflict("a", "10.0.0.1:7946", "10.0.0.2:7946", 2)
    assert c.local_member().incarnation == 1  # no second refutation within the interval
    c.receive_datagram(claim(2, THEIRS), THEIRS, 30.0)  # a push-pull brings it back: a copy
    assert list(events(c)) == [] and c.local_member().incarnation == 1
    c.receive_datagram(claim(2, THEIRS), THEIRS, 61.5)  # the interval has passed: refute again
    assert c.local_member().incarnation == 3
    assert [type(e) for e in events(c)] == [LocalRefuted]


def test_two_nodes_with_one_name_refute_at_a_bounded_rate_and_both_report_it() -> None:
    """A and B share a name; an observer O hears both. Every simulated second each pushes its
    current claim to the other and to O (what gossip and push-pulls do). Ten minutes."""
    a, b = core("a", OURS), core("a", THEIRS)
    observer = core("o", ("10.0.0.3", 7946))
    conflicts = {"A": 0, "B": 0}
    refutations = {"A": 0, "B": 0}
    moves = 0
    where = None
    for second in range(1, 601):
        now = float(second)
        for src, dst in ((a, b), (b, a)):
            mine = src.local_member()
            dst.receive_datagram(claim(mine.incarnation, mine.gossip_addr), mine.gossip_addr, now)
            observer.receive_datagram(claim(mine.incarnation, mine.gossip_addr),
                                      mine.gossip_addr, now)
        for label, c in (("A", a), ("B", b)):
            for event in events(c):
                conflicts[label] += isinstance(event, NameConflict)
                refutations[label] += isinstance(event, LocalRefuted)
        seen = observer.member("a")
        assert seen is not None
        if where is not None and seen.gossip_addr != where:
            moves += 1
        where = seen.gossip_addr
    assert conflicts["A"] >= 5 and conflicts["B"] >= 5  # both keep reporting it
    assert all(n <= 600 / INTERVAL_S + 1 for n in refutations.values())  # at most one a minute
    assert moves <= 2 * (600 / INTERVAL_S + 1)  # the name moves at a bounded rate, no flapping


async def test_two_live_services_with_one_name_log_the_conflict_naming_both_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="p2preg.gossip.service")
    async with gossip_services() as start:
        first = await start("same", seed=1)
        second = await start("same", seed=2, join=(gossip_address(first),))
        third = await start("c", seed=3, join=(gossip_address(first),))
        await until(lambda: first.stats()["name_conflicts"] + second.stats()["name_conflicts"] > 0)
        refuted = [s.stats()["refutations"] for s in (first, second)]
        # gossip and push-pulls (every 0.5 s) keep bringing each one's claim to the other for
        # some seconds: no war follows (a refutation at most once a minute)
        mark = third.stats()["push_pulls"]
        await until(lambda: third.stats()["push_pulls"] >= mark + 4)
        assert [s.stats()["refutations"] for s in (first, second)] == refuted
        (seen,) = [m for m in third.members() if m.name == "same"]
        assert seen.status.value == "alive"
    lines = [r.getMessage() for r in caplog.records if "node name 'same'" in r.getMessage()]
    assert lines
    addrs = {gossip_address(first), gossip_address(second)}
    assert all(addr in lines[0] for addr in addrs) and "--node-name" in lines[0]


# -- default names ---------------------------------------------------------------------------------


def test_the_default_name_is_the_host_name_plus_an_id_kept_in_the_data_dir(
    tmp_path: Path,
) -> None:
    name = default_node_name(tmp_path / "d1", hostname="worker-3.example.org")
    assert name.startswith("worker-3-") and len(name) == len("worker-3-") + 8
    assert default_node_name(tmp_path / "d1", hostname="worker-3") == name  # stable
    other = default_node_name(tmp_path / "d2", hostname="worker-3")  # a clone of the host
    assert other != name
    (tmp_path / "d3").mkdir()
    (tmp_path / "d3" / NODE_ID_FILE).write_text("not an id\n")
    with pytest.raises(NodeIdError, match="delete the file"):
        default_node_name(tmp_path / "d3", hostname="h")


async def test_two_nodes_with_default_names_on_one_host_name_form_a_cluster(
    tmp_path: Path,
) -> None:
    nodes: list[Node] = []
    try:
        for i in range(2):
            join: tuple[str, ...] = ()
            if nodes:
                host, port = nodes[0].gossip.bound_address[:2]
                join = (f"{host}:{port}",)
            node = Node(Config(mode="registry", listen="127.0.0.1:0",
                               data_dir=str(tmp_path / f"n{i}"), gossip_listen="127.0.0.1:0",
                               join=join))
            await node.start()
            nodes.append(node)
        names = [n.gossip.node_name for n in nodes]
        assert names[0] != names[1]
        assert names[0].rsplit("-", 1)[0] == names[1].rsplit("-", 1)[0]  # the same host name
        await until(lambda: all(
            sorted(m.name for m in n.gossip.members() if m.status.value == "alive")
            == sorted(names) for n in nodes))
        assert all(n.gossip.stats()["name_conflicts"] == 0 for n in nodes)
    finally:
        for node in reversed(nodes):
            await node.stop()
