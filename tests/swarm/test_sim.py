"""The data-plane simulator driving the node's Scheduler and UploadPolicy: the swarm spreads a
blob in about one transfer with about piece_cap copies per host, where today's star needs the
owner to upload N-1 copies. Deterministic: seeded, fake clock."""

from __future__ import annotations

import pytest

from p2preg.swarm.pieces import piece_bytes
from p2preg.swarm.scheduler import SchedulerConfig
from p2preg.swarm.sim import BlobSpec, SimResult, Topology, star, swarm

MBIT = 1e6 / 8
N = 8
SIZE = 8 << 20
# The lab's N=8 shape: hosts at 128 Mbit/s both ways, the origin at half that.
TOPOLOGY = Topology(128 * MBIT, 128 * MBIT, 64 * MBIT, rtt_s=0.001)
BLOB = BlobSpec.of("sha256:" + "5a" * 32, SIZE, piece_bytes(SIZE))
ONE_ORIGIN_TRANSFER_S = SIZE / (64 * MBIT)


def _swarm(seed: int) -> SimResult:
    return swarm(seed, N, TOPOLOGY, [BLOB]).run(until_s=120)


def test_the_swarm_finishes_in_about_one_origin_transfer() -> None:
    result = _swarm(1)
    assert all(h.done_s is not None for h in result.hosts)
    assert result.quantile(1.0) <= 1.3 * ONE_ORIGIN_TRANSFER_S
    assert result.origin_copies() == pytest.approx(1.0)


def test_no_host_uploads_more_than_piece_cap_copies_plus_slack() -> None:
    result = _swarm(1)
    assert result.max_upload_copies() <= 2.5
    # Everyone but the last to finish helped: the load is spread, not concentrated.
    assert sum(h.uploaded_bytes > 0 for h in result.hosts) >= N // 2


def test_same_seed_same_run() -> None:
    a, b = _swarm(3), _swarm(3)
    assert a.completion() == b.completion()
    assert [h.uploaded_bytes for h in a.hosts] == [h.uploaded_bytes for h in b.hosts]


def test_the_star_baseline_fails_both_bounds() -> None:
    result = star(1, N, TOPOLOGY, [BLOB]).run(until_s=120)
    # The owner's uplink carries N-1 copies and serialises the cluster.
    assert result.max_upload_copies() == pytest.approx(N - 1)
    expected = (N - 1) * SIZE / (128 * MBIT)
    assert result.quantile(1.0) == pytest.approx(expected, rel=0.05)
    assert result.quantile(1.0) > 1.3 * ONE_ORIGIN_TRANSFER_S


def test_the_cut_through_waits_are_the_servers() -> None:
    from p2preg.p2p import server
    from p2preg.swarm import sim

    assert (sim.CUT_THROUGH_WAIT_S, sim.ROOT_FEED_WAIT_S) == \
        (server.CUT_THROUGH_WAIT_S, server.ROOT_FEED_WAIT_S)


def test_the_update_phase_spreads_over_both_seeds_without_the_origin() -> None:
    # The owner and one host hold the blob; the 6 others pull at once.
    sim = swarm(1, N, TOPOLOGY, [BLOB], holders=2)
    result = sim.run(until_s=120)
    one_host_transfer = SIZE / (128 * MBIT)
    assert all(h.done_s is not None for h in result.hosts)
    assert result.quantile(1.0) <= 1.5 * one_host_transfer
    assert result.origin_copies() == 0
    assert result.max_upload_copies() <= 1.5  # not one seed serving everyone (6 copies)


def test_the_schedulers_remembered_idle_picks_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kraken's shape in small (links at the origin's rate, two layers, busy answers, probes
    # and 404s): the scheduler's "nothing to ask until the next backoff expiry" shortcut
    # must give the run it gives without it, to the bit.
    from p2preg.swarm.scheduler import Scheduler

    topology = Topology(300e6, 300e6, 300e6, rtt_s=0.001)
    blobs = [BlobSpec.of("sha256:" + c * 64, 96 << 20, 1 << 20) for c in "ab"]
    hits = 0
    pick = Scheduler._pick

    def counted(self: Scheduler, now: float) -> object:
        nonlocal hits
        hits += now < self._quiet_until
        return pick(self, now)

    monkeypatch.setattr(Scheduler, "_pick", counted)
    rules_1_6 = SchedulerConfig(tracker=False)  # the tracker's fills send no busy or probe
    sim = swarm(1, 12, topology, blobs, scheduler=rules_1_6)
    fast = sim.run(until_s=60)
    assert hits > 1000  # the shortcut was taken
    assert sim.answers["missing"] > 200 and sim.answers["busy"] > 1000
    monkeypatch.setattr(Scheduler, "_pick", lambda self, now: self._pick_now(now))
    slow_sim = swarm(1, 12, topology, blobs, scheduler=rules_1_6)
    assert slow_sim.run(until_s=60) == fast
    assert slow_sim.answers == sim.answers


def test_every_answer_tells_the_asker_the_servers_uploads_in_progress(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from p2preg.swarm import sim
    from p2preg.swarm.uploads import UploadConfig

    seen: list[tuple[str, int]] = []
    tell = sim.SchedulerDownloader.on_load

    def record(self: sim.SchedulerDownloader, peer: str, load: int, now: float) -> None:
        seen.append((peer, load))
        tell(self, peer, load, now)

    monkeypatch.setattr(sim.SchedulerDownloader, "on_load", record)
    run = swarm(1, N, TOPOLOGY, [BLOB])
    run.run(until_s=120)
    answers = run.answers["served"] + run.answers["busy"] + run.answers["missing"]
    assert 0 < len(seen) <= answers
    cfg = UploadConfig()
    assert max(load for _, load in seen) <= cfg.upload_slots + cfg.last_resort_slots
    assert max(load for _, load in seen) >= 2  # uploads overlap: the count is live, not 0/1
    # a served piece counts itself: every peer that served something said so with load >= 1
    assert {p for p, load in seen if load >= 1} >= {h for h in run.hosts
                                                     if run.net.carried((h, "up")) > 0}


def test_a_slots_busy_backoff_cuts_the_busy_answers_and_the_time() -> None:
    # Kraken's shape in small. Backing the slots-busy peer off for every piece
    # (slots_busy_backoff_s) cuts the busy answers (asking it for the next piece would be
    # refused too), and the run finishes sooner (docs/benchmarks-swarm.md, "hints on a
    # slots-busy answer"; the hints' former rule, slot_hints=0, was removed after it).
    topology = Topology(300e6, 300e6, 300e6, rtt_s=0.001)
    blobs = [BlobSpec.of("sha256:" + c * 64, 96 << 20, 1 << 20) for c in "ab"]
    runs = []
    for backoff in (0.0, 0.1):
        sim = swarm(1, 12, topology, blobs,
                    scheduler=SchedulerConfig(slots_busy_backoff_s=backoff, tracker=False))
        runs.append((sim.run(until_s=60), dict(sim.answers)))
    (hinted, hinted_a), (both, both_a) = runs
    assert hinted_a["served"] == both_a["served"]
    assert both_a["busy"] * 3 < hinted_a["busy"] * 2
    requests = [a["served"] + a["busy"] + a["missing"] for a in (hinted_a, both_a)]
    assert requests[1] < requests[0]
    assert hinted.quantile(0.5) > both.quantile(0.5)
    assert hinted.quantile(1.0) > both.quantile(1.0)


@pytest.mark.parametrize("shape", ["create", "update", "kraken"])
def test_the_fast_flow_engine_gives_the_reference_engines_run(shape: str) -> None:
    # FlowNetwork's fast engine (the default) against its reference (tests/swarm/
    # test_flows_engines.py checks the two on random flow sets): the whole run is the same,
    # to the bit: every host's completion and upload, the events, the answers.
    # Rules 1-6 alone (no tracker): many more flows start and stop (the tracker's runs move
    # each piece down its tree once: a fraction of the reallocations).
    busy = SchedulerConfig(tracker=False)

    def run(engine: str) -> tuple[SimResult, dict[str, int]]:
        if shape == "kraken":  # Kraken's shape in small: busy answers, 404s, relays
            blobs = [BlobSpec.of("sha256:" + c * 64, 96 << 20, 1 << 20) for c in "ab"]
            sim = swarm(1, 12, Topology(300e6, 300e6, 300e6, rtt_s=0.001), blobs,
                        flow_engine=engine, scheduler=busy)
        else:
            sim = swarm(1, N, TOPOLOGY, [BLOB], holders=2 if shape == "update" else 0,
                        flow_engine=engine, scheduler=busy)
        return sim.run(until_s=120), dict(sim.answers)

    (fast, fast_answers), (ref, ref_answers) = run("fast"), run("reference")
    assert fast == ref
    assert fast_answers == ref_answers
    assert fast.reallocations > 40 and fast_answers["cut_through"] > 0


# -- coordinated forwarding: the owner's tracker assigns stripe parents ---------------------

TRACKED = SchedulerConfig(tracker=True)
UNTRACKED = SchedulerConfig(tracker=False)


def _requests(sim: object) -> tuple[int, int]:
    answers = sim.answers  # type: ignore[attr-defined]
    return sum(answers[k] for k in ("served", "busy", "missing")), answers["served"]


def test_with_the_tracker_each_piece_moves_down_its_stripe_with_one_request_per_host() -> None:
    sim = swarm(1, N, TOPOLOGY, [BLOB], scheduler=TRACKED)
    result = sim.run(until_s=120)
    assert result.quantile(1.0) <= 1.02 * ONE_ORIGIN_TRANSFER_S
    assert result.origin_copies() == pytest.approx(1.0)
    assert result.max_upload_copies() <= 1.01  # one copy per host, the owner's included
    sent, served = _requests(sim)
    assert sent == served == (N - 1) * BLOB.layout.count
    tracker = sim.trackers[BLOB.digest]
    assert len(tracker) == N  # the owner and every fill joined


def test_with_the_tracker_the_update_phase_takes_one_host_transfer_not_1_25() -> None:
    one_host_transfer_s = SIZE / (128 * MBIT)
    before = swarm(1, N, TOPOLOGY, [BLOB], holders=2, scheduler=UNTRACKED).run(until_s=120)
    sim = swarm(1, N, TOPOLOGY, [BLOB], holders=2, scheduler=TRACKED)
    after = sim.run(until_s=120)
    assert after.origin_bytes == 0
    # (a 0.5 s transfer: the join's round trip and 20 ms answer hold are 4% of it)
    assert after.quantile(1.0) <= 1.1 * one_host_transfer_s < before.quantile(1.0)
    assert after.max_upload_copies() <= 1.01
    # The second seed is in the tracker as a complete node, at the top of every stripe.
    tracker = sim.trackers[BLOB.digest]
    seeds = [h.name for h in after.hosts if h.done_s == 0.0]
    assert len(seeds) == 2
    assert all(tracker.depth(s, stripe) == 0 for s in seeds for stripe in (0, 1))


def test_two_layers_with_different_owners_finish_near_one_transfer_with_the_tracker() -> None:
    # Kraken's case in small: two layers, links the same rate everywhere (no slack).
    topo = Topology(100e6, 100e6, 100e6, rtt_s=0.001)
    blobs = [BlobSpec.of("sha256:" + c * 64, 50_000_000, 1 << 20) for c in "ab"]
    one_s = 1.0
    before = swarm(1, 12, topo, blobs, scheduler=UNTRACKED).run(until_s=60)
    sim = swarm(1, 12, topo, blobs, scheduler=TRACKED)
    after = sim.run(until_s=60)
    assert after.quantile(0.5) <= 1.08 * one_s < before.quantile(0.5)
    assert after.max_upload_copies() <= 1.02
    sent, served = _requests(sim)
    assert sent == served


def test_pipelined_parent_requests_hide_a_lab_sized_round_trip_in_the_update() -> None:
    # The lab's N=16 update with ~100 ms per-hop round trips (tbf queues, a loaded machine):
    # one request at a time idles each child's stripe a round trip per piece and hop.
    size = 16 << 20
    topo = Topology(64 * MBIT, 64 * MBIT, 32 * MBIT, rtt_s=0.1)
    blob = BlobSpec.of("sha256:" + "6b" * 32, size, piece_bytes(size))
    one_host_transfer_s = size / (64 * MBIT)
    done = {}
    for pr in (1, 2):
        sim = swarm(1, 16, topo, [blob], holders=2,
                    scheduler=SchedulerConfig(parent_requests=pr))
        result = sim.run(until_s=120)
        assert all(h.done_s is not None for h in result.hosts)
        assert result.max_upload_copies() <= 1.01
        done[pr] = result.quantile(1.0) / one_host_transfer_s
        # The second request waits in line at the parent: one child flow at a time.
        assert (sim.answers["queued"] > 0) == (pr == 2)
        assert sim.answers["busy"] == sim.answers["missing"] == 0
    assert done[1] >= 1.2
    assert done[2] <= 1.1
