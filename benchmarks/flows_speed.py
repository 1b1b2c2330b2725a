"""Flow engine benchmark: CPU per max-min reallocation of ``p2preg.swarm.flows`` on swarm-shaped
flow sets, the reference engine against the fast one in the same run.

A synthetic load shaped like the simulator's Kraken case (``benchmarks/swarm_sim.py``), without
the scheduler: N hosts with an uplink and a downlink of 300 MB/s each, the origin's uplink
feeding the two owners one 8 MiB piece after the other; every other host keeps 4-8 incoming
8 MiB piece flows from random peers, most of them relays (cut-through: ``feeder`` is the newest
flow the sender is receiving, so relay chains grow about log2 N deep, as the swarm's trees); a
flow that
completes is replaced by a new one to the same host in the same batch, and now and then a flow
is cancelled with the relays it fed (a withdrawn request). Events within 0.5 ms share one
reallocation, as in ``SwarmSim.run``. Both engines are driven by the same seeded event
sequence and must give the same rates after every reallocation (checked: the run stops on
the first difference).

    .venv/bin/python -m benchmarks.flows_speed                       # N = 100, 1,000, 2,600
    .venv/bin/python -m benchmarks.flows_speed --sizes 100 --batches 200

Writes ``docs/benchmarks/flows_speed.json`` and the ``flows-speed`` section of
``docs/benchmarks-swarm.md``. Not a test: nothing but the engines' agreement is checked here.
Must not import asyncio or sockets.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import machine_info, update_docs_section, write_results
from p2preg.swarm.flows import ENGINES, Flow, FlowNetwork

ROOT = Path(__file__).resolve().parent.parent
JSON_OUT = ROOT / "docs" / "benchmarks" / "flows_speed.json"
MD_OUT = ROOT / "docs" / "benchmarks-swarm.md"
SECTION = "flows-speed"
LINK_BPS = 300e6
PIECE_BYTES = 8 << 20
BATCH_S = 0.0005
RELAY_P = 0.9
"""How often a new flow relays a piece its sender is receiving (when it receives any): 91% of
the flows are relays in the simulator at Kraken N=100 with coordinated forwarding."""
CANCEL_P = 0.02
"""How often a batch cancels one random flow (and the relays it fed)."""


@dataclass
class Row:
    nodes: int
    engine: str
    batches: int
    reallocations: int
    events: int
    flows_mean: float
    max_relay_depth: int
    realloc_ms: float
    """CPU per reallocation (milliseconds)."""
    event_us: float
    """CPU per event (flow started, completed or cancelled): the engine's work (reallocations
    included) and the load's own bookkeeping, the same for both engines."""
    cpu_s: float


class _Load:
    """One seeded run of the synthetic swarm load on one engine."""

    def __init__(self, net: FlowNetwork, nodes: int, seed: int) -> None:
        self.net = net
        self.rng = random.Random(seed)
        self.nodes = nodes
        self.origin = net.add_link("origin", LINK_BPS)
        self.up = [net.add_link((h, "up"), LINK_BPS) for h in range(nodes)]
        self.down = [net.add_link((h, "down"), LINK_BPS) for h in range(nodes)]
        self.want = [0 if h < 2 else self.rng.randint(4, 8) for h in range(nodes)]
        self.incoming: list[list[Flow]] = [[] for _ in range(nodes)]
        self.events = 0
        for owner in (0, 1):
            self._origin_flow(owner)
        for h in range(2, nodes):
            for _ in range(self.want[h]):
                # the flows under way at time 0 are at random points of their pieces: the
                # completions do not come in one wave
                self._peer_flow(h, self.rng.uniform(0.02, 1.0) * PIECE_BYTES)

    def _origin_flow(self, owner: int) -> None:
        f = self.net.start([self.origin, self.down[owner]], PIECE_BYTES, (owner, None))
        self.incoming[owner].append(f)
        self.events += 1

    def _peer_flow(self, receiver: int, size: float = PIECE_BYTES) -> None:
        rng = self.rng
        sender = rng.randrange(self.nodes - 1)
        sender += sender >= receiver
        feeding = [f for f in self.incoming[sender] if f.active]
        feeder = feeding[-1] if feeding and rng.random() < RELAY_P else None
        f = self.net.start([self.up[sender], self.down[receiver]], size, (receiver, sender),
                           feeder=feeder)
        self.incoming[receiver].append(f)
        self.events += 1

    def _ended(self, flow: Flow) -> None:
        receiver = flow.tag[0]  # type: ignore[index]
        self.incoming[receiver] = [f for f in self.incoming[receiver] if f.active]
        if receiver < 2:
            self._origin_flow(receiver)
        else:
            self._peer_flow(receiver)

    def _cancel(self, flow: Flow) -> None:
        followers = list(flow.followers)
        self.net.cancel(flow)
        self.events += 1
        self._ended(flow)
        for relay in followers:
            if relay.active:
                self._cancel(relay)

    def batch(self) -> None:
        """One batch: the next completions within 0.5 ms (each replaced), maybe a cancel."""
        net = self.net
        start = net.next_finish()
        if start is None:
            start = net.now
        horizon = start + BATCH_S
        while True:
            t = net.next_finish()
            if t is None or t > horizon:
                break
            for flow in net.advance(max(net.now, t)):
                self.events += 1
                self._ended(flow)
        if self.rng.random() < CANCEL_P:
            receiver = self.rng.randrange(2, self.nodes)
            live = [f for f in self.incoming[receiver] if f.active]
            if live:
                self._cancel(self.rng.choice(live))


def relay_depth(net: FlowNetwork) -> int:
    deepest = 0
    for f in net.flows:
        depth, g = 0, f
        while g.feeder is not None:
            depth, g = depth + 1, g.feeder
        deepest = max(deepest, depth)
    return deepest


def run(nodes: int, batches: int, seed: int, engines: list[str]) -> list[Row]:
    loads = [_Load(FlowNetwork(engine=e), nodes, seed) for e in engines]
    cpu = [0.0] * len(loads)
    realloc = [0.0] * len(loads)
    flows = 0
    depth = 0
    for b in range(batches):
        for k, load in enumerate(loads):
            t = time.process_time()
            load.batch()
            if load.net.dirty:
                t_fill = time.process_time()
                load.net.reallocate()
                realloc[k] += time.process_time() - t_fill
            cpu[k] += time.process_time() - t
        states = [[f.rate for f in sorted(ld.net.flows, key=lambda f: f.id)] + [ld.net.now]
                  for ld in loads]
        if any(s != states[0] for s in states):
            raise SystemExit(f"N={nodes} batch {b}: the engines' rates or times differ")
        flows += len(states[0]) - 1
        if b % 50 == 0:
            depth = max(depth, relay_depth(loads[0].net))
    return [Row(nodes, e, batches, ld.net.reallocations, ld.events, flows / batches, depth,
                1000 * r / max(1, ld.net.reallocations), 1e6 * c / max(1, ld.events), c)
            for e, ld, c, r in zip(engines, loads, cpu, realloc, strict=True)]


def markdown(rows: list[Row], command: str) -> str:
    head = ("| N | engine | flows (mean) | deepest relay chain | reallocations | events | "
            "CPU per reallocation | CPU per event | vs reference |\n"
            "|---|---|---|---|---|---|---|---|---|")
    ref = {r.nodes: r.realloc_ms for r in rows if r.engine == "reference"}
    lines = [
        f"| {r.nodes:,} | {r.engine} | {r.flows_mean:,.0f} | {r.max_relay_depth} | "
        f"{r.reallocations:,} | {r.events:,} | {r.realloc_ms:.2f} ms | {r.event_us:.0f} us | "
        f"{ref[r.nodes] / r.realloc_ms if r.nodes in ref else math.nan:.2f}x |"
        for r in rows
    ]
    note = (f"Command: {command} (Python {platform.python_version()}, one thread; CPU "
            "(`time.process_time`) on a shared 2-core machine).")
    return "\n".join([note, "", head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 2600])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows: list[Row] = []
    for n in args.sizes:
        rows += run(n, args.batches, args.seed, args.engines)
    command = (f"`benchmarks/flows_speed.py --sizes {' '.join(map(str, args.sizes))} "
               f"--batches {args.batches}`")
    table = markdown(rows, command)
    print(table)
    if not args.no_write:
        write_results(JSON_OUT, {"command": command, "machine": machine_info(),
                                 "rows": [asdict(r) for r in rows]})
        update_docs_section(MD_OUT, SECTION, table)


if __name__ == "__main__":
    main()
