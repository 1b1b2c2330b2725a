"""The flow-level network: max-min fair rates on hand-computed cases, completion times."""

from __future__ import annotations

import pytest

from p2preg.swarm.flows import FlowNetwork


def _net(**caps: float) -> tuple[FlowNetwork, dict[str, int]]:
    net = FlowNetwork()
    return net, {name: net.add_link(name, cap) for name, cap in caps.items()}


def test_two_flows_share_an_uplink_equally() -> None:
    net, ln = _net(a_up=100, b_down=1000, c_down=1000)
    f1 = net.start([ln["a_up"], ln["b_down"]], 100)
    f2 = net.start([ln["a_up"], ln["c_down"]], 100)
    net.reallocate()
    assert (f1.rate, f2.rate) == (50, 50)
    assert net.next_finish() == pytest.approx(2.0)


def test_flow_bottlenecked_downstream_leaves_the_rest_to_the_other() -> None:
    # a's uplink 100 shared by two flows, but b's downlink takes only 20: c gets 80, not 50.
    net, ln = _net(a_up=100, b_down=20, c_down=1000)
    f1 = net.start([ln["a_up"], ln["b_down"]], 100)
    f2 = net.start([ln["a_up"], ln["c_down"]], 100)
    net.reallocate()
    assert f1.rate == pytest.approx(20)
    assert f2.rate == pytest.approx(80)


def test_downlink_shared_by_two_senders() -> None:
    net, ln = _net(a_up=100, b_up=100, c_down=60)
    f1 = net.start([ln["a_up"], ln["c_down"]], 30)
    f2 = net.start([ln["b_up"], ln["c_down"]], 30)
    net.reallocate()
    assert f1.rate == f2.rate == pytest.approx(30)


def test_classic_three_link_chain() -> None:
    # Links L1 (cap 1) and L2 (cap 2); flow x crosses both, y only L1, z only L2.
    # Max-min: L1 is the bottleneck at 1/2 for x and y; z takes L2's rest, 1.5.
    net, ln = _net(l1=1, l2=2)
    x = net.start([ln["l1"], ln["l2"]], 10)
    y = net.start([ln["l1"]], 10)
    z = net.start([ln["l2"]], 10)
    net.reallocate()
    assert (x.rate, y.rate, z.rate) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(1.5))


def test_rates_rise_when_a_flow_completes() -> None:
    net, ln = _net(a_up=100, b_down=1000, c_down=1000)
    short = net.start([ln["a_up"], ln["b_down"]], 50)
    long = net.start([ln["a_up"], ln["c_down"]], 150)
    net.reallocate()
    assert net.next_finish() == pytest.approx(1.0)
    assert net.advance(1.0) == [short]
    assert net.dirty
    net.reallocate()
    assert long.rate == 100
    # 50 bytes done at 1 s, 100 left at 100 B/s.
    assert net.next_finish() == pytest.approx(2.0)
    assert net.advance(2.0) == [long]
    assert net.carried("a_up") == pytest.approx(200)
    assert net.carried("c_down") == pytest.approx(150)


def test_a_flow_started_between_reallocations_moves_nothing_until_the_next() -> None:
    net, ln = _net(a_up=100, b_down=1000)
    f = net.start([ln["a_up"], ln["b_down"]], 100)
    net.advance(5.0)
    assert f.bytes_at(5.0) == 0
    net.reallocate()
    assert net.next_finish() == pytest.approx(6.0)


def test_cancel_returns_progress_and_frees_the_link() -> None:
    net, ln = _net(a_up=100, b_down=1000, c_down=1000)
    f1 = net.start([ln["a_up"], ln["b_down"]], 1000)
    f2 = net.start([ln["a_up"], ln["c_down"]], 1000)
    net.reallocate()
    net.advance(2.0)
    assert net.cancel(f1) == pytest.approx(100)
    net.reallocate()
    assert f2.rate == 100
    assert net.next_finish() == pytest.approx(2.0 + 900 / 100)


def test_capacity_is_never_exceeded_on_a_random_mesh() -> None:
    import random

    rng = random.Random(7)
    net = FlowNetwork()
    ups = [net.add_link(("up", i), rng.uniform(10, 100)) for i in range(20)]
    downs = [net.add_link(("down", i), rng.uniform(10, 100)) for i in range(20)]
    flows = [net.start([rng.choice(ups), rng.choice(downs)], 1) for _ in range(120)]
    net.reallocate()
    for idx in ups + downs:
        link = net._links[idx]
        used = sum(f.rate for f in link.flows)
        assert used <= link.capacity * (1 + 1e-9)
    # Max-min: every flow has a saturated link on which it has the largest rate.
    for f in flows:
        assert f.rate > 0
        assert any(
            sum(g.rate for g in net._links[i].flows) >= net._links[i].capacity * (1 - 1e-9)
            and all(g.rate <= f.rate * (1 + 1e-9) for g in net._links[i].flows)
            for i in f.links
        )


def test_a_relay_never_outruns_its_feeder() -> None:
    # a -> b at 10 (a's uplink); b relays to c over b's uplink of 100: capped at 10, and the
    # 90 left on b's uplink goes to b's other upload.
    net, ln = _net(a_up=10, b_down=1000, b_up=100, c_down=1000, d_down=1000)
    feed = net.start([ln["a_up"], ln["b_down"]], 100)
    relay = net.start([ln["b_up"], ln["c_down"]], 100, feeder=feed)
    other = net.start([ln["b_up"], ln["d_down"]], 1000)
    net.reallocate()
    assert (feed.rate, relay.rate, other.rate) == pytest.approx((10, 10, 90))
    assert relay.feeder is feed and feed.followers == [relay]


def test_a_relay_is_free_once_its_feeder_completes() -> None:
    net, ln = _net(a_up=10, b_down=1000, b_up=100, c_down=1000)
    feed = net.start([ln["a_up"], ln["b_down"]], 10)
    net.reallocate()
    net.advance(0.5)
    relay = net.start([ln["b_up"], ln["c_down"]], 100, feeder=feed)
    net.reallocate()
    assert relay.rate == pytest.approx(10)
    assert net.advance(1.0) == [feed]
    assert relay.feeder is None
    net.reallocate()
    assert relay.rate == pytest.approx(100)
