"""What the p2p path needs from cluster membership, and an in-memory implementation of it.

Owns: the ``Membership`` protocol (the subset of ``gossip.GossipService`` the p2p path calls:
``node_name``, ``members``, ``holders``, ``fetchers``, ``advertise_have/fetching/drop``),
``live_peers`` (members as routing ``Peer``s) and ``StaticCluster`` / ``StaticMembership``: a
fixed set of nodes sharing one in-process catalog, for tests and single-host setups (like
Spegel's in-memory router, it lives outside the tests so every user of the protocol can run
against it). ``StaticMembership.holders``/``fetchers`` answer in the order nodes were added.

Must not import aiohttp, storage, fetch or registry; from gossip only the ``Member`` snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from p2preg.gossip.member import Member, MemberStatus
from p2preg.p2p.routing import Peer

LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


class Membership(Protocol):
    """The membership and catalog calls of the p2p path (``GossipService`` implements it)."""

    node_name: str

    def members(self) -> list[Member]: ...

    def holders(self, digest: str) -> list[Member]: ...

    def fetchers(self, digest: str) -> list[Member]: ...

    def advertise_have(self, digest: str) -> None: ...

    def advertise_have_many(self, digests: Iterable[str]) -> int: ...

    def advertise_fetching(self, digest: str) -> None: ...

    def advertise_drop(self, digest: str) -> None: ...


def as_peers(members: Sequence[Member]) -> list[Peer]:
    """Live members with an HTTP address, as routing ``Peer``s (order kept)."""
    return [Peer(m.name, m.http_addr) for m in members if m.status in LIVE and m.http_addr]


class StaticCluster:
    """A fixed cluster in one process: nodes, their status and one shared catalog."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        self._state: dict[str, dict[str, str]] = {}  # digest -> node -> "have" | "fetching"

    def add(self, name: str, http_addr: str, *, zone: str = "") -> StaticMembership:
        """Add (or re-address) a live node and return its view of the cluster."""
        self._members[name] = Member(name=name, gossip_addr=("127.0.0.1", 0),
                                     http_addr=http_addr, zone=zone, incarnation=0,
                                     status=MemberStatus.ALIVE)
        return StaticMembership(self, name)

    def set_status(self, name: str, status: MemberStatus) -> None:
        member = self._members[name]
        self._members[name] = Member(name=member.name, gossip_addr=member.gossip_addr,
                                     http_addr=member.http_addr, zone=member.zone,
                                     incarnation=member.incarnation + 1, status=status)

    def members(self) -> list[Member]:
        return list(self._members.values())

    def nodes_in_state(self, digest: str, state: str) -> list[str]:
        return [n for n, s in self._state.get(digest, {}).items() if s == state]

    def set_state(self, node: str, digest: str, state: str | None) -> None:
        states = self._state.setdefault(digest, {})
        if state is None:
            states.pop(node, None)
        else:
            states[node] = state


class StaticMembership:
    """One node's view of a ``StaticCluster`` (implements ``Membership``)."""

    def __init__(self, cluster: StaticCluster, node_name: str) -> None:
        self.cluster = cluster
        self.node_name = node_name

    def members(self) -> list[Member]:
        own = [m for m in self.cluster.members() if m.name == self.node_name]
        return own + [m for m in self.cluster.members() if m.name != self.node_name]

    def _live_with(self, digest: str, state: str) -> list[Member]:
        names = set(self.cluster.nodes_in_state(digest, state))
        return [m for m in self.cluster.members()
                if m.name in names and m.name != self.node_name and m.status in LIVE]

    def holders(self, digest: str) -> list[Member]:
        return self._live_with(digest, "have")

    def fetchers(self, digest: str) -> list[Member]:
        return self._live_with(digest, "fetching")

    def advertise_have(self, digest: str) -> None:
        self.cluster.set_state(self.node_name, digest, "have")

    def advertise_have_many(self, digests: Iterable[str]) -> int:
        count = 0
        for digest in digests:
            self.advertise_have(digest)
            count += 1
        return count

    def advertise_fetching(self, digest: str) -> None:
        self.cluster.set_state(self.node_name, digest, "fetching")

    def advertise_drop(self, digest: str) -> None:
        self.cluster.set_state(self.node_name, digest, None)
