"""The gossip layer: SWIM + Lifeguard membership, the digest catalog, Vivaldi coordinates.

Package face. The sans-I/O engine is ``GossipCore`` (``core.py``); ``sim.py`` runs many of them over
an in-memory network. The asyncio driver and discovery live in sibling modules and are the only
ones here allowed to import asyncio or sockets.
"""

from p2preg.gossip.config import Addr, GossipConfig
from p2preg.gossip.core import GossipCore, GossipStats, PushPullStart
from p2preg.gossip.events import (
    CatalogChanged,
    Event,
    LocalRefuted,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    NameConflict,
)
from p2preg.gossip.member import Member, MemberStatus
from p2preg.gossip.vivaldi import Coordinate, VivaldiConfig
from p2preg.gossip.wire import PROTOCOL_VERSION, DropCounters, DropReason, Keyring, KeyringError

__all__ = [
    "PROTOCOL_VERSION",
    "Addr",
    "CatalogChanged",
    "Coordinate",
    "DropCounters",
    "DropReason",
    "Event",
    "GossipConfig",
    "GossipCore",
    "GossipStats",
    "Keyring",
    "KeyringError",
    "LocalRefuted",
    "Member",
    "MemberAlive",
    "MemberDead",
    "MemberJoined",
    "MemberLeft",
    "MemberStatus",
    "MemberSuspect",
    "MemberUpdated",
    "NameConflict",
    "PushPullStart",
    "VivaldiConfig",
]
