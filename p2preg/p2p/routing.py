"""Where to fetch a blob from: the pure choice of peer sources for one digest.

Owns: ``Peer``, ``Candidate``, ``RoutePlan``, the rendezvous hash (``hrw_score``, ``hrw_order``,
``owner_of``) and ``plan_route``. The rules, in order:

1. Peers that **hold** the blob, nearest first (the order membership gives).
2. Peers that are **fetching** it, nearest first, but only those ranked *above* this node in
   the digest's HRW order: following a growing file is only safe along a chain that ends at the
   owner, so two fetchers can never wait on each other (a cycle would stall both).
3. The digest's **owner**: the live member with the highest rendezvous score for the digest
   (this node included). Every node that is not the owner asks it, with role ``owner``: the
   owner joins or starts the one upstream fill of the cluster and streams it while it arrives.
   When the owner is also a holder or fetcher it keeps its place there but is asked as owner.
4. The upstream comes after every peer (the mirror appends it). Only the owner (or a node whose
   owner could not deliver, i.e. is gone) ever reaches it.

A node acting **for a peer** (it was asked as owner) uses holders only: no fetchers, no other
owner; a peer request therefore fans out at most once, and never back into the fetch chain.
Skipped peers (wrong bytes for this digest) are left out; demoted ones (recent failures) go
last among the peers. At most ``max_peers`` peers are returned.

Pure functions, no I/O; must not import asyncio, aiohttp or the gossip package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

ROLE_HOLDER = "holder"
ROLE_FETCHER = "fetcher"
ROLE_OWNER = "owner"
ROLES = frozenset({ROLE_HOLDER, ROLE_FETCHER, ROLE_OWNER})
DEFAULT_MAX_PEERS = 4


@dataclass(frozen=True, slots=True)
class Peer:
    """A live cluster member: its unique name and the HTTP ``host:port`` of its p2p endpoint."""

    name: str
    http_addr: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One peer to try, and why (``role``: holder, fetcher or owner)."""

    peer: Peer
    role: str


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The peers to try in order; ``owner`` is the digest's owner (None: no live member)."""

    candidates: tuple[Candidate, ...]
    owner: str | None
    self_is_owner: bool


def hrw_score(digest: str, node: str) -> int:
    """The rendezvous (highest random weight) score of ``node`` for ``digest``."""
    h = hashlib.sha256(f"{digest}\x00{node}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def hrw_order(digest: str, nodes: Iterable[str]) -> list[str]:
    """``nodes`` by descending score for ``digest`` (ties, practically impossible, by name)."""
    return sorted(set(nodes), key=lambda n: (-hrw_score(digest, n), n))


def owner_of(digest: str, nodes: Iterable[str]) -> str | None:
    """The member that owns ``digest`` among ``nodes``, or None when there is none."""
    order = hrw_order(digest, nodes)
    return order[0] if order else None


def plan_route(
    digest: str,
    *,
    self_name: str,
    live: Sequence[Peer],
    holders: Sequence[Peer],
    fetchers: Sequence[Peer],
    skipped: Collection[str] = (),
    demoted: Collection[str] = (),
    acting_for_peer: bool = False,
    max_peers: int = DEFAULT_MAX_PEERS,
) -> RoutePlan:
    """The ordered peer sources for ``digest`` as seen by ``self_name`` (module docstring)."""
    live_names = {p.name for p in live if p.http_addr} | {self_name}
    order = hrw_order(digest, live_names)
    owner = order[0]
    rank = {name: i for i, name in enumerate(order)}
    self_rank = rank[self_name]
    by_name = {p.name: p for p in live if p.http_addr}

    def usable(p: Peer) -> bool:
        return p.name != self_name and p.name in live_names and p.name not in skipped \
            and bool(p.http_addr)

    chosen: list[Candidate] = []
    seen: set[str] = set()

    def add(p: Peer, role: str) -> None:
        if p.name in seen or not usable(p):
            return
        seen.add(p.name)
        chosen.append(Candidate(p, ROLE_OWNER if p.name == owner and not acting_for_peer
                                else role))

    for p in holders:
        add(p, ROLE_HOLDER)
    if not acting_for_peer:
        for p in fetchers:
            if rank.get(p.name, len(order)) < self_rank:
                add(p, ROLE_FETCHER)
        if owner != self_name and owner in by_name:
            add(by_name[owner], ROLE_OWNER)
    if demoted:
        chosen.sort(key=lambda c: c.peer.name in demoted)  # stable: order kept within groups
    return RoutePlan(tuple(chosen[:max_peers]), owner, owner == self_name)
