"""The membership protocol the p2p path needs: the static implementation, and the gossip service
fits it (checked by mypy: ``as_membership`` would not type-check otherwise)."""

from __future__ import annotations

from p2preg.gossip.member import MemberStatus
from p2preg.gossip.service import GossipService
from p2preg.p2p.membership import Membership, StaticCluster, as_peers
from p2preg.p2p.routing import Peer


def as_membership(service: GossipService) -> Membership:
    return service


def test_a_node_sees_itself_first_and_never_as_a_holder_of_its_own_blobs() -> None:
    cluster = StaticCluster()
    a = cluster.add("a", "127.0.0.1:1")
    b = cluster.add("b", "127.0.0.1:2")
    a.advertise_have("sha256:x")
    b.advertise_fetching("sha256:x")
    assert [m.name for m in b.members()] == ["b", "a"]
    assert [m.name for m in b.holders("sha256:x")] == ["a"]
    assert a.holders("sha256:x") == [] and [m.name for m in a.fetchers("sha256:x")] == ["b"]


def test_a_dropped_or_dead_holder_is_no_holder() -> None:
    cluster = StaticCluster()
    a = cluster.add("a", "127.0.0.1:1")
    b = cluster.add("b", "127.0.0.1:2")
    c = cluster.add("c", "127.0.0.1:3")
    a.advertise_have("sha256:x")
    b.advertise_have("sha256:x")
    a.advertise_drop("sha256:x")
    cluster.set_status("b", MemberStatus.DEAD)
    assert c.holders("sha256:x") == []


def test_only_live_members_with_an_address_become_routing_peers() -> None:
    cluster = StaticCluster()
    a = cluster.add("a", "127.0.0.1:1")
    cluster.add("b", "")
    cluster.add("c", "127.0.0.1:3")
    cluster.set_status("c", MemberStatus.LEFT)
    assert as_peers(a.members()) == [Peer("a", "127.0.0.1:1")]
