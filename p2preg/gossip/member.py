"""What a cluster member is, as the rest of p2preg sees it.

Owns: ``MemberStatus`` and the frozen ``Member`` snapshot handed out by the core. Must not import
asyncio, sockets or other p2preg modules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from p2preg.gossip.config import Addr


class MemberStatus(enum.StrEnum):
    """SWIM status of a member, as this node currently believes it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member. ``rtt_estimate_s`` is None until a coordinate is known."""

    name: str
    gossip_addr: Addr
    http_addr: str
    zone: str
    incarnation: int
    status: MemberStatus
    load: float = 0.0
    meta: dict[str, str] = field(default_factory=dict)
    rtt_estimate_s: float | None = None
