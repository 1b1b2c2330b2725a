"""A refutation must not get lost: the repair path for a node that missed it.

Found at 1,000 nodes under 5% loss: the refutation of a healthy member was sent ~16,000 times
cluster-wide, yet one node received none of them (a Poisson tail, ~1e-6 per node and suspicion,
which 1,000 nodes x hundreds of suspicions do hit), kept its suspicion and declared the member
dead when it expired. The rules tested here: a node that still suspects a member a while later
asks it directly (the suspicion ahead of a PING), and a member that hears an accusation about an
older incarnation re-announces itself, so its ACK carries the current alive claim back to the
node that missed it.
"""

from __future__ import annotations

import random

from p2preg.gossip import GossipConfig, GossipCore, MemberStatus
from p2preg.gossip.messages import Alive, Ping, Suspect
from p2preg.gossip.suspicion import suspicion_bounds
from p2preg.gossip.wire import DropCounters, MessageType, assemble_packet, decode_packet

PEERS = [f"p{i}" for i in range(1, 21)]


def addr_of(name: str) -> tuple[str, int]:
    return (f"10.0.1.{PEERS.index(name) + 1}", 7946)


def alive(name: str, incarnation: int = 0) -> Alive:
    host, port = addr_of(name)
    return Alive(incarnation, name, host, port, f"{host}:5000", "", {})


def packet(*parts: tuple[int, bytes]) -> bytes:
    return assemble_packet(list(parts), None)


def core_knowing_peers(name: str = "a", *, lifeguard: bool = True) -> GossipCore:
    """A core at t=0 that knows the 20 peers as alive (21 nodes: k = 2 confirmations)."""
    cfg = GossipConfig(name=name, gossip_addr=("10.0.0.1", 7946), lifeguard=lifeguard)
    core = GossipCore(cfg, random.Random(7), now=0.0)
    for peer in PEERS:
        core.receive_datagram(packet((MessageType.ALIVE, alive(peer).encode())), ("x", 1), 0.0)
    core.datagrams_to_send(0.0)
    core.clear_events()
    return core


def sent_parts(
    core: GossipCore, now: float
) -> list[tuple[tuple[str, int], list[tuple[int, object]]]]:
    out = []
    for data, addr in core.datagrams_to_send(now):
        parts = decode_packet(data, None, DropCounters(), 1400)
        assert parts is not None
        out.append((addr, parts))
    return out


def status(core: GossipCore, name: str) -> MemberStatus:
    member = core.member(name)
    assert member is not None
    return member.status


def test_a_stale_accusation_makes_the_member_re_announce_itself_in_its_ack() -> None:
    core = core_knowing_peers("p9")
    core.receive_datagram(
        packet((MessageType.SUSPECT, Suspect(0, "p9", "p1").encode())), ("x", 1), 1.0
    )
    assert core.local_member().incarnation == 1
    for seq in range(40):  # the refutation's retransmit budget runs out
        core.receive_datagram(
            packet((MessageType.PING, Ping(seq, "p9", "p2").encode())), ("x", 1), 1.0
        )
    sent_parts(core, 1.0)
    # A node that missed the refutation probes us with its old suspicion (buddy system).
    buddy = packet(
        (MessageType.SUSPECT, Suspect(0, "p9", "p3").encode()),
        (MessageType.PING, Ping(99, "p9", "p3").encode()),
    )
    core.receive_datagram(buddy, addr_of("p3"), 2.0)
    [(to, parts)] = sent_parts(core, 2.0)
    assert to == addr_of("p3")
    assert parts[0][0] == MessageType.ACK and parts[0][1][0] == 99  # type: ignore[index]
    alives = [body for t, body in parts if t == MessageType.ALIVE]
    assert [body[:2] for body in alives] == [[1, "p9"]]  # type: ignore[index]
    assert core.local_member().incarnation == 1, "a stale accusation is not refuted again"


def verifications_sent(core: GossipCore, until: float, to_peer: str) -> list[float]:
    """Run ``core``'s timers until ``until``; when it sent a bare suspicion + PING to the peer."""
    out = []
    t = core.get_timer()
    while t is not None and t <= until:
        core.handle_timer(t)
        for to, parts in sent_parts(core, t):
            kinds = [mt for mt, _ in parts]
            if to == addr_of(to_peer) and kinds == [MessageType.SUSPECT, MessageType.PING]:
                out.append(t)
        t = core.get_timer()
    return out


def test_a_suspicion_still_running_is_verified_with_the_member_three_times() -> None:
    core = core_knowing_peers()
    min_s, _ = suspicion_bounds(4, 6, 21, 1.0)
    core.receive_datagram(
        packet((MessageType.SUSPECT, Suspect(0, "p17", "p1").encode())), ("x", 1), 1.0
    )
    sent_parts(core, 1.0)
    sent = [round(t - 1.0, 6) for t in verifications_sent(core, 1.0 + min_s, "p17")]
    assert sent == [round(f * min_s, 6) for f in (0.25, 0.5, 0.75)]


def test_a_refuted_suspicion_is_not_verified() -> None:
    core = core_knowing_peers()
    core.receive_datagram(
        packet((MessageType.SUSPECT, Suspect(0, "p17", "p1").encode())), ("x", 1), 1.0
    )
    core.receive_datagram(packet((MessageType.ALIVE, alive("p17", 1).encode())), ("x", 1), 1.5)
    assert verifications_sent(core, 30.0, "p17") == []


def test_without_lifeguard_nothing_is_verified() -> None:
    core = core_knowing_peers(lifeguard=False)
    core.receive_datagram(
        packet((MessageType.SUSPECT, Suspect(0, "p17", "p1").encode())), ("x", 1), 1.0
    )
    assert verifications_sent(core, 30.0, "p17") == []


def test_a_node_that_missed_the_refutation_learns_it_from_the_verification_ack() -> None:
    observer = core_knowing_peers()
    member = core_knowing_peers("p9")
    suspicion = packet((MessageType.SUSPECT, Suspect(0, "p9", "p1").encode()))
    member.receive_datagram(suspicion, ("x", 1), 1.0)  # refutes: incarnation 1 ...
    for seq in range(40):  # ... and its broadcast is spent, but never reaches the observer
        member.receive_datagram(
            packet((MessageType.PING, Ping(seq, "p9", "p2").encode())), ("x", 1), 1.0
        )
    sent_parts(member, 1.0)
    observer.receive_datagram(suspicion, ("x", 1), 1.0)
    observer.datagrams_to_send(1.0)
    t = observer.get_timer()
    while status(observer, "p9") == MemberStatus.SUSPECT:
        assert t is not None
        observer.handle_timer(t)
        for data, to in observer.datagrams_to_send(t):
            if to == addr_of("p9"):
                member.receive_datagram(data, ("10.0.0.1", 7946), t)
                for reply, back in member.datagrams_to_send(t):
                    if back == ("10.0.0.1", 7946):
                        observer.receive_datagram(reply, addr_of("p9"), t)
        t = observer.get_timer()
    assert status(observer, "p9") == MemberStatus.ALIVE
    assert observer.member("p9").incarnation == 1  # type: ignore[union-attr]
    assert member.local_member().incarnation == 1
