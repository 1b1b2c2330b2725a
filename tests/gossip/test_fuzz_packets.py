"""Hypothesis fuzzing of the core's two inputs: UDP packets and push-pull stream messages.

Random, truncated, oversized and wrongly signed input never raises out of the core and never
changes its state; it is dropped and counted.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2preg.gossip import GossipConfig, GossipCore, Keyring
from p2preg.gossip.messages import Alive, CatalogDelta, Ping, Suspect
from p2preg.gossip.wire import DropReason, MessageType, assemble_packet

KEY = Keyring([b"k" * 32])
OTHER_KEY = Keyring([b"x" * 32])
DIGEST = "sha256:" + "d" * 64
SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def make_core(keyring: Keyring | None) -> GossipCore:
    cfg = GossipConfig(name="a", gossip_addr=("10.0.0.1", 7946), http_addr="10.0.0.1:5000")
    core = GossipCore(cfg, random.Random(5), now=0.0, keyring=keyring)
    alive = Alive(3, "b", "10.0.0.2", 7946, "10.0.0.2:5000", "z", {})
    core.receive_datagram(
        assemble_packet([(MessageType.ALIVE, alive.encode())], keyring), ("x", 1), 0.0
    )
    core.advertise_have(DIGEST)
    core.datagrams_to_send(0.0)
    while core.next_event() is not None:
        pass
    return core


def state(core: GossipCore) -> tuple[Any, ...]:
    return (
        core.members(),
        core.catalog.versions(),
        core.catalog.fingerprint(["a", "b"]),
        core.awareness_score,
        core.get_timer(),
    )


def valid_packet(keyring: Keyring | None) -> bytes:
    parts = [
        (MessageType.PING, Ping(1, "a", "b").encode()),
        (MessageType.SUSPECT, Suspect(3, "b", "c").encode()),
        (MessageType.CATALOG, CatalogDelta("b", 0, 1, DIGEST, 1).encode()),
    ]
    return assemble_packet(parts, keyring)


KEYED = make_core(KEY)
KEYED_STATE = state(KEYED)
UNKEYED = make_core(None)
UNKEYED_STATE = state(UNKEYED)
VALID_SIGNED = valid_packet(KEY)


def assert_untouched(core: GossipCore, before: tuple[Any, ...]) -> None:
    assert state(core) == before
    assert core.datagrams_to_send(1.0) == []
    assert core.next_event() is None


@SETTINGS
@given(st.binary(max_size=1600))
def test_random_bytes_never_change_a_keyed_core(data: bytes) -> None:
    KEYED.receive_datagram(data, ("x", 1), 1.0)
    assert_untouched(KEYED, KEYED_STATE)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_SIGNED) - 1))
def test_truncated_signed_packets_are_dropped(cut: int) -> None:
    core = make_core(KEY)
    before, drops = state(core), core.drops.total
    core.receive_datagram(VALID_SIGNED[:cut], ("x", 1), 1.0)
    assert_untouched(core, before)
    assert core.drops.total == drops + 1


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_SIGNED) - 1), st.integers(1, 255))
def test_bit_flipped_signed_packets_are_dropped(index: int, flip: int) -> None:
    data = bytearray(VALID_SIGNED)
    data[index] ^= flip
    KEYED.receive_datagram(bytes(data), ("x", 1), 1.0)
    assert_untouched(KEYED, KEYED_STATE)


@settings(SETTINGS, max_examples=50)
@given(st.binary(min_size=1401, max_size=4000))
def test_oversized_packets_are_dropped_before_parsing(data: bytes) -> None:
    oversized = UNKEYED.drops.by_reason[DropReason.OVERSIZED]
    UNKEYED.receive_datagram(data, ("x", 1), 1.0)
    assert_untouched(UNKEYED, UNKEYED_STATE)
    assert UNKEYED.drops.by_reason[DropReason.OVERSIZED] == oversized + 1


def test_a_valid_packet_signed_with_a_foreign_key_changes_nothing() -> None:
    core = make_core(KEY)
    before = state(core)
    core.receive_datagram(valid_packet(OTHER_KEY), ("x", 1), 1.0)
    assert_untouched(core, before)
    core.receive_datagram(valid_packet(None), ("x", 1), 1.0)
    assert_untouched(core, before)
    assert core.drops.by_reason[DropReason.UNAUTHENTICATED] == 2
    core.receive_datagram(VALID_SIGNED, ("x", 1), 1.0)
    assert core.datagrams_to_send(1.0) != [], "the genuine packet is answered"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=80)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)  # fmt: skip


@SETTINGS
@given(st.integers(0, 255), json_values)
def test_structured_garbage_of_any_type_never_raises(mtype: int, body: Any) -> None:
    core = make_core(None)
    try:
        encoded = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    core.receive_datagram(bytes((1, mtype)) + encoded, ("x", 1), 1.0)
    core.receive_datagram(assemble_packet([(mtype % 256, encoded)], None), ("x", 1), 1.0)
    core.handle_timer(2.0)
    core.datagrams_to_send(2.0)


@SETTINGS
@given(json_values)
def test_random_push_pull_messages_never_raise_or_change_state(message: Any) -> None:
    core = make_core(KEY)
    before = state(core)
    assert core.handle_push_pull(message, 1.0) is None or isinstance(message, list)
    if not (isinstance(message, list) and message and message[0] in (0, 1, 2)):
        assert_untouched(core, before)


@SETTINGS
@given(st.binary(max_size=3000))
def test_random_stream_bytes_never_change_a_keyed_core(data: bytes) -> None:
    decoder = KEYED.stream_decoder()
    for message in decoder.feed(data):
        KEYED.handle_push_pull(message, 1.0)
    assert_untouched(KEYED, KEYED_STATE)
