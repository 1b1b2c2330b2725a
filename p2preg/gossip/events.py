"""Events the gossip core hands out through ``next_event()``: small frozen dataclasses.

Owns: the event types. Must not import asyncio, sockets or other p2preg modules except the gossip
member types.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2preg.gossip.member import Member


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member became known (or came back after being dead/left)."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A known member changed its addresses, zone or meta (same life)."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    """A member is suspected of having failed; it is dead unless it refutes in time."""

    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspected member refuted the suspicion."""

    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberDead:
    """A member was declared dead (failed, not a graceful leave)."""

    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member left gracefully."""

    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class CatalogChanged:
    """``node``'s state for ``digest`` changed: ``"have"``, ``"fetching"`` or None (dropped)."""

    node: str
    digest: str
    state: str | None


@dataclass(frozen=True, slots=True)
class LocalRefuted:
    """This node was suspected or declared dead by others and refuted with a new incarnation."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class NameConflict:
    """Another live node uses this node's name: it answered our refutation from ``theirs``
    (gossip ``host:port``; ours is ``ours``) with an alive claim of ``incarnation``. Two nodes with
    one name never form a cluster; the fix is a unique ``--node-name``."""

    name: str
    ours: str
    theirs: str
    incarnation: int


Event = (
    MemberJoined
    | MemberUpdated
    | MemberSuspect
    | MemberAlive
    | MemberDead
    | MemberLeft
    | CatalogChanged
    | LocalRefuted
    | NameConflict
)
