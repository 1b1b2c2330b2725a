"""The swarm on the multi-host lab: real ``p2preg serve`` processes, one per network namespace,
each behind a capped link; a host killed mid-transfer and a host serving wrong bytes."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from benchmarks.lab import Lab, PullResult
from tests.lab.conftest import lab_or_skip
from tests.support.netns import wait_until

pytestmark = pytest.mark.netns

SENT = "p2preg_p2p_sent_bytes_total"
RECEIVED = "p2preg_fill_received_bytes_total"
MIB = 1 << 20


def _data_dir(lab: Lab, host: int) -> Path:
    proc = lab._nodes[host]
    assert proc is not None
    argv = list(proc.argv)
    return Path(argv[argv.index("--data-dir") + 1])


def _owner_now(lab: Lab) -> int | None:
    fetching = [i for i in range(lab.n_hosts)
                if lab.node_alive(i) and lab.metric(i, RECEIVED, source="upstream") > 0]
    return fetching[0] if fetching else None


def _pull_in_background(lab: Lab, digest: str, timeout_s: float
                        ) -> tuple[threading.Thread, dict[str, list[PullResult]]]:
    """Every host pulls ``digest`` at once in a started thread; its results land in
    ``box["r"]`` when all have ended."""
    box: dict[str, list[PullResult]] = {}
    puller = threading.Thread(target=lambda: box.setdefault(
        "r", lab.pull_many(range(lab.n_hosts), digest, timeout_s=timeout_s)))
    puller.start()
    return puller, box


def test_five_hosts_share_the_uploads_of_a_new_blob() -> None:
    size = 6 * MIB + 4321
    with lab_or_skip(5, host_mbit=64, origin_mbit=32) as lab:
        digest = lab.push_blob(size, seed=21)
        lab.start_nodes("p2preg")

        results = lab.pull_many(range(5), digest)

        assert [(r.status, r.nbytes, r.digest_ok) for r in results] == [(200, size, True)] * 5
        assert lab.origin_blob_gets(digest) == (1, size)
        wait_until(lambda: sum(lab.metric(i, SENT) for i in range(5))
                   >= sum(lab.metric(i, RECEIVED, source="peer") for i in range(5)), 10,
                   what="peer responses recorded")
        sent = [lab.metric(i, SENT) for i in range(5)]
        # a star would make the owner send 4 copies; the swarm spreads the pieces
        assert max(sent) <= 2.5 * size, sent
        assert sum(1 for s in sent if s > 0.25 * size) >= 3, sent


def test_the_owner_killed_mid_transfer_stops_nobody_and_the_origin_sends_under_two_copies(
) -> None:
    size = 6 * MIB
    with lab_or_skip(5, host_mbit=64, origin_mbit=16) as lab:  # one origin transfer: ~3 s
        digest = lab.push_blob(size, seed=22)
        lab.start_nodes("p2preg")
        puller, box = _pull_in_background(lab, digest, timeout_s=120)
        wait_until(lambda: _owner_now(lab) is not None, 10, what="the owner fetching")
        time.sleep(1.0)
        owner = _owner_now(lab)
        assert owner is not None
        lab.kill(owner)
        puller.join(150)

        survivors = [r for r in box["r"] if r.host != owner]
        assert [(r.status, r.nbytes, r.digest_ok) for r in survivors] == [(200, size, True)] * 4
        gets, sent_bytes = lab.origin_blob_gets(digest)
        assert 1 <= gets <= 2 and sent_bytes <= 2 * size  # the successor resumed with Range


def test_a_host_serving_wrong_bytes_commits_nothing_anywhere_and_is_penalised() -> None:
    size = 4 * MIB
    with lab_or_skip(4, host_mbit=64, origin_mbit=64) as lab:
        digest = lab.push_blob(size, seed=23)
        lab.start_nodes("p2preg")
        [first] = lab.pull_many([0], digest)
        assert first.digest_ok
        # host 0's copy rots on disk: it now serves wrong bytes for every piece
        algorithm, hexdigest = digest.split(":")
        path = _data_dir(lab, 0) / "blobs" / algorithm / hexdigest[:2] / hexdigest
        wait_until(path.exists, 10, what="host 0's commit")  # a big blob's last byte goes first
        path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))

        results = lab.pull_many([1, 2, 3], digest)
        # host 0 is the only holder (for the nodes that heard of it by gossip by now): a fill
        # that took bytes from it fails and its answer is aborted, never a complete wrong body
        assert any(not r.digest_ok for r in results), results
        assert all(r.digest_ok or r.nbytes < size or r.status != 200 for r in results), results
        retried = [lab.pull(r.host, digest) for r in results if not r.digest_ok]
        assert all(r.digest_ok for r in retried), retried
        wrong = sum(lab.metric(i, "p2preg_p2p_penalties_total", cause="wrong_bytes")
                    for i in (1, 2, 3))
        assert wrong >= sum(1 for r in results if not r.digest_ok)
        for host in (1, 2, 3):  # what the others committed is the blob itself
            stored = _data_dir(lab, host) / "blobs" / algorithm / hexdigest[:2] / hexdigest
            wait_until(stored.exists, 10, what=f"host {host}'s commit")
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == hexdigest


PARENTS = "p2preg_swarm_parents"
PARENT_PIECES = "p2preg_swarm_parent_pieces_total"


def _children_of_parents(lab: Lab, owner: int) -> dict[tuple[int, int], list[int]]:
    """(parent host, stripe) -> the hosts whose fill has it as that stripe's parent now: the
    owner's last ``P2preg-Parents`` answer to each, from their ``p2preg_swarm_parents``."""
    out: dict[tuple[int, int], list[int]] = {}
    for host in range(lab.n_hosts):
        if host == owner or not lab.node_alive(host):
            continue
        for sample in lab.metrics(host):
            if sample.name == PARENTS and sample.value > 0:
                parent = (int(sample.labels["peer"].removeprefix("h")),
                          int(sample.labels["stripe"]))
                out.setdefault(parent, []).append(host)
    return out


def _interior_parent(lab: Lab) -> tuple[int, int, list[int]] | None:
    """The lowest-numbered host that is not the owner and is a stripe parent of others now:
    (host, stripe, its children there); None until the owner's answers name one."""
    owner = _owner_now(lab)
    if owner is None:
        return None
    interior = sorted((p, kids) for p, kids in _children_of_parents(lab, owner).items()
                      if p[0] != owner)
    return (interior[0][0][0], interior[0][0][1], interior[0][1]) if interior else None


def test_an_interior_parent_killed_mid_transfer_is_replaced_and_the_origin_sends_once(
) -> None:
    size = 24 * MIB  # ~3.1 s at 64 Mbit/s: the kill lands mid-transfer
    with lab_or_skip(6, host_mbit=64, origin_mbit=64) as lab:
        digest = lab.push_blob(size, seed=24)
        lab.start_nodes("p2preg")
        puller, box = _pull_in_background(lab, digest, timeout_s=60)
        wait_until(lambda: _interior_parent(lab) is not None, 10,
                   what="the owner naming an interior parent")
        found = _interior_parent(lab)
        assert found is not None
        victim, stripe, children = found
        # its children took pieces of its stripe from it; the owner's answers still name it
        wait_until(lambda: all(lab.metric(c, PARENT_PIECES, stripe=str(stripe)) >= 2
                               for c in children), 10, what="pieces down the victim's stripe")
        owner = _owner_now(lab)
        assert owner is not None and owner != victim
        still = _children_of_parents(lab, owner).get((victim, stripe), [])
        assert still, "the victim's children moved before the kill"
        lab.kill(victim)
        wait_until(lambda: not lab.node_alive(victim), 5, what="the victim's exit")
        before = {c: lab.metric(c, PARENT_PIECES, stripe=str(stripe)) for c in still}
        puller.join(90)
        assert "r" in box, "the pulls did not end"

        survivors = [r for r in box["r"] if r.host != victim]
        assert [(r.status, r.nbytes, r.digest_ok) for r in survivors] == [(200, size, True)] * 5
        assert lab.origin_blob_gets(digest) == (1, size)  # the origin sent the blob once
        for child in still:
            # it noticed the dead parent itself, and took the stripe's next pieces from a new
            # parent (the victim was dead by then: every one of them came from someone else)
            assert lab.metric(child, "p2preg_swarm_parent_losses_total") >= 1, child
            after = lab.metric(child, PARENT_PIECES, stripe=str(stripe))
            assert after > before[child], (child, before[child], after)
        # gossip declared the victim dead and the owner took it out of its tracker's trees
        wait_until(lambda: lab.metric(owner, "p2preg_tracker_events_total", event="leave") >= 1,
                   20, what="the owner's tracker told of the death")
