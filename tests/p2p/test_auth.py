"""Peer request signatures (pure) and the penalty list: both driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from p2preg.clock import FakeClock
from p2preg.gossip.wire import Keyring
from p2preg.p2p.auth import (
    NODE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    AuthFailure,
    RequestSigner,
    RequestVerifier,
)
from p2preg.p2p.penalties import PenaltyBox

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
PATH = "/p2p/v1/blobs/sha256:" + "ab" * 32
T0 = 1_700_000_000.0


def signed(key: bytes, clock: FakeClock, seed: int = 1, **extra: str) -> dict[str, str]:
    headers = {NODE_HEADER: "node-a", **extra}
    signer = RequestSigner(Keyring([key]), clock=clock, rng=random.Random(seed))
    headers.update(signer.sign("GET", PATH, headers))
    return headers


def reason(verifier: RequestVerifier, headers: dict[str, str], method: str = "GET",
           path: str = PATH) -> str:
    with pytest.raises(AuthFailure) as caught:
        verifier.verify(method, path, headers)
    return caught.value.reason


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def test_a_signed_request_verifies_and_names_its_node(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    assert verifier.verify("GET", PATH, signed(KEY_A, clock)).node == "node-a"


def test_an_unsigned_request_is_missing_its_signature(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    assert reason(verifier, {NODE_HEADER: "node-a"}) == "missing"


def test_a_request_signed_with_another_key_is_refused(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    assert reason(verifier, signed(KEY_B, clock)) == "bad_signature"


def test_a_request_signed_with_a_rotated_in_key_is_accepted(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A, KEY_B]), clock=clock)
    assert verifier.verify("GET", PATH, signed(KEY_B, clock)).node == "node-a"


@pytest.mark.parametrize("change", ["method", "path", "node", "range"])
def test_changing_anything_signed_breaks_the_signature(clock: FakeClock, change: str) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    headers = signed(KEY_A, clock, Range="bytes=0-")
    method, path = "GET", PATH
    if change == "method":
        method = "HEAD"
    elif change == "path":
        path = PATH.replace("ab", "cd", 1)
    elif change == "node":
        headers[NODE_HEADER] = "node-b"
    else:
        headers["Range"] = "bytes=5-"
    assert reason(verifier, headers, method, path) == "bad_signature"


@pytest.mark.parametrize("offset_s", [-31.0, 31.0])
def test_a_request_outside_the_skew_window_is_stale(clock: FakeClock, offset_s: float) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock, max_skew_s=30.0)
    sender = FakeClock(T0 + offset_s)
    assert reason(verifier, signed(KEY_A, sender)) == "stale"


def test_a_request_inside_the_skew_window_is_accepted(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock, max_skew_s=30.0)
    verifier.verify("GET", PATH, signed(KEY_A, FakeClock(T0 - 29.0)))


def test_a_replayed_request_is_refused_and_forgotten_once_stale(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock, max_skew_s=30.0)
    headers = signed(KEY_A, clock)
    verifier.verify("GET", PATH, headers)
    assert reason(verifier, headers) == "replayed"
    clock.advance(31.0)
    assert reason(verifier, headers) == "stale"
    verifier.verify("GET", PATH, signed(KEY_A, clock, seed=2))
    assert verifier.remembered_nonces == 1


def test_a_bad_signature_does_not_burn_the_nonce(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    good = signed(KEY_A, clock)
    forged = dict(good, **{SIGNATURE_HEADER: "v1=" + "00" * 32})
    assert reason(verifier, forged) == "bad_signature"
    verifier.verify("GET", PATH, good)


@pytest.mark.parametrize(("header", "value"), [
    (SIGNATURE_HEADER, "v2=abc"), (NONCE_HEADER, "not hex"), ("P2preg-Date", "soon"),
    ("P2preg-Date", "nan"),
])
def test_malformed_auth_headers_are_refused(clock: FakeClock, header: str, value: str) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock)
    headers = dict(signed(KEY_A, clock), **{header: value})
    assert reason(verifier, headers) == "malformed"


def test_the_replay_cache_is_bounded(clock: FakeClock) -> None:
    verifier = RequestVerifier(Keyring([KEY_A]), clock=clock, max_nonces=2)
    verifier.verify("GET", PATH, signed(KEY_A, clock, seed=1))
    verifier.verify("GET", PATH, signed(KEY_A, clock, seed=2))
    assert reason(verifier, signed(KEY_A, clock, seed=3)) == "overloaded"


# -- penalties -------------------------------------------------------------------------------------


def test_a_peer_that_sent_wrong_bytes_is_skipped_for_that_digest_until_it_expires() -> None:
    clock = FakeClock()
    box = PenaltyBox(clock, wrong_bytes_s=60.0, failure_s=10.0)
    box.wrong_bytes("liar", "sha256:aa")
    assert box.skipped("sha256:aa") == {"liar"}
    assert box.skipped("sha256:bb") == set()
    assert box.demoted() == {"liar"}
    clock.advance(60.0)
    assert box.skipped("sha256:aa") == set()
    assert box.demoted() == set()


def test_a_failing_peer_is_demoted_for_a_short_while() -> None:
    clock = FakeClock()
    box = PenaltyBox(clock, failure_s=10.0)
    box.failed("flaky")
    assert box.demoted() == {"flaky"} and box.skipped("sha256:aa") == set()
    clock.advance(9.9)
    assert box.demoted() == {"flaky"}
    clock.advance(0.1)
    assert box.demoted() == set()


def test_the_penalty_box_is_bounded() -> None:
    box = PenaltyBox(FakeClock(), max_entries=3)
    for i in range(10):
        box.failed(f"peer{i}")
    assert box.demoted() == {"peer7", "peer8", "peer9"}
