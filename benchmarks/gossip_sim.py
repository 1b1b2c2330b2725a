"""Gossip simulation benchmark: convergence, failure detection, false deaths, bytes per node.

Runs the sans-I/O gossip core over the in-memory network of ``p2preg.gossip.sim`` for several
cluster sizes, with and without 5% packet loss, and writes ``docs/benchmarks/gossip_sim.json``,
the table in ``docs/benchmarks-gossip.md`` (between the RESULTS markers) and
``docs/benchmarks/gossip_sim.png``. Deterministic: every run is seeded.

    .venv/bin/python benchmarks/gossip_sim.py                 # N = 100, 300, 1000
    .venv/bin/python benchmarks/gossip_sim.py --sizes 100 300 --window 60

Not a test: nothing is asserted here. Must not import asyncio or sockets.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from p2preg.gossip.config import GossipConfig
from p2preg.gossip.member import MemberStatus
from p2preg.gossip.sim import Simulation

ROOT = Path(__file__).resolve().parent.parent
JSON_OUT = ROOT / "docs" / "benchmarks" / "gossip_sim.json"
PNG_OUT = ROOT / "docs" / "benchmarks" / "gossip_sim.png"
MD_OUT = ROOT / "docs" / "benchmarks-gossip.md"
BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
GOSSIP_INTERVAL_S = 0.2


@dataclass
class Row:
    nodes: int
    loss: float
    join_rounds: int | None
    """Gossip rounds (0.2 s) from the last join of a storm until every node knows every member."""
    delta_rounds: int
    """Gossip rounds until a ``have`` delta is known by every live node."""
    detect_s: float
    """Seconds from a crash until every live node marks the node dead."""
    false_deaths_lifeguard: int
    false_deaths_no_lifeguard: int
    """Dead declarations about live nodes during the window (Lifeguard on / off)."""
    udp_bytes_node_s: float
    tcp_bytes_node_s: float
    cpu_s: float


def template(lifeguard: bool = True) -> GossipConfig:
    return GossipConfig(name="template", gossip_addr=("0.0.0.0", 0), lifeguard=lifeguard)


def join_rounds(nodes: int, loss: float, seed: int) -> int | None:
    sim = Simulation(seed=seed, loss=loss, config=template())
    sim.add_node("n0")
    step = (nodes / 100) / max(1, nodes - 1)
    for i in range(1, nodes):
        sim.run_for(step)
        sim.add_node(f"n{i}", join=[f"n{sim.rng.randrange(i)}"])
    end = sim.now
    if not sim.run_for(600.0, until=sim.all_converged, check_every_s=GOSSIP_INTERVAL_S):
        return None
    return math.ceil((sim.now - end) / GOSSIP_INTERVAL_S)


def steady(nodes: int, loss: float, window_s: float, seed: int) -> tuple[int, float, float, float]:
    """(delta rounds, detection seconds, udp B/node/s, tcp B/node/s) with Lifeguard on."""
    sim = Simulation(seed=seed, loss=loss, config=template())
    names = sim.add_converged_cluster(nodes)
    sim.run_for(20.0)
    udp0 = sim.byte_marks()
    tcp0 = {n.name: n.tcp_bytes_sent for n in sim.nodes.values()}
    sim.run_for(window_s)
    udp = sim.udp_bytes_per_node_s(udp0, window_s)
    tcp = sum(n.tcp_bytes_sent - tcp0[n.name] for n in sim.nodes.values()) / nodes / window_s
    digest = "sha256:" + "e" * 64
    origin = sim.nodes[names[-1]]
    origin.core.advertise_have(digest)
    sim.run_for(0.0)
    start = sim.now
    sim.run_for(
        60.0,
        until=lambda: all(
            n is origin or n.core.catalog.nodes_with(digest) for n in sim.live_nodes()
        ),
        check_every_s=GOSSIP_INTERVAL_S,
    )
    delta_rounds = math.ceil((sim.now - start) / GOSSIP_INTERVAL_S)
    victim = names[nodes // 2]
    sim.crash(victim)
    crashed = sim.now

    def all_dead() -> bool:
        for n in sim.live_nodes():
            m = n.core.member(victim)
            if m is None or m.status != MemberStatus.DEAD:
                return False
        return True

    sim.run_for(300.0, until=all_dead, check_every_s=0.1)
    return delta_rounds, sim.now - crashed, udp, tcp


def false_deaths(nodes: int, loss: float, window_s: float, lifeguard: bool, seed: int) -> int:
    sim = Simulation(seed=seed, loss=loss, config=template(lifeguard))
    sim.add_converged_cluster(nodes)
    sim.run_for(window_s)
    return len(sim.counters.deaths)


def run(sizes: list[int], losses: list[float], window_s: float, join_max: int) -> list[Row]:
    rows = []
    for nodes in sizes:
        for loss in losses:
            t0 = time.process_time()
            seed = nodes * 10 + int(loss * 100)
            jr = join_rounds(nodes, loss, seed) if nodes <= join_max else None
            delta, detect, udp, tcp = steady(nodes, loss, window_s, seed)
            fd_on = false_deaths(nodes, loss, window_s, True, seed + 1)
            fd_off = false_deaths(nodes, loss, window_s, False, seed + 1)
            row = Row(nodes, loss, jr, delta, round(detect, 1), fd_on, fd_off,
                      round(udp, 1), round(tcp, 1), round(time.process_time() - t0, 1))  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[Row], window_s: float, command: str) -> str:
    lines = [
        f"Command: `{command}` (Python {platform.python_version()}, one thread; "
        f"false deaths and bytes over {window_s:.0f} simulated seconds).",
        "",
        "| N | loss | join storm: rounds after last join | `have` delta: rounds | crash seen dead"
        " by all (s) | false deaths, Lifeguard on | false deaths, Lifeguard off | UDP B/node/s |"
        " push-pull TCP B/node/s | CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        jr = "-" if r.join_rounds is None else str(r.join_rounds)
        lines.append(
            f"| {r.nodes} | {r.loss:.0%} | {jr} | {r.delta_rounds} | {r.detect_s} | "
            f"{r.false_deaths_lifeguard} | {r.false_deaths_no_lifeguard} | {r.udp_bytes_node_s} |"
            f" {r.tcp_bytes_node_s} | {r.cpu_s} |"
        )
    return "\n".join(lines)


def write_markdown(table: str) -> None:
    text = MD_OUT.read_text() if MD_OUT.exists() else f"# Gossip benchmark\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    MD_OUT.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def plot(rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for loss, style in ((0.0, "o-"), (0.05, "s--")):
        sel = [r for r in rows if r.loss == loss]
        if not sel:
            continue
        xs = [r.nodes for r in sel]
        label = f"loss {loss:.0%}"
        axes[0].plot(xs, [r.udp_bytes_node_s for r in sel], style, label=label)
        axes[1].plot(xs, [r.detect_s for r in sel], style, label=label)
        axes[2].plot(xs, [r.delta_rounds for r in sel], style, label=f"have delta, {label}")
        jx = [r.nodes for r in sel if r.join_rounds is not None]
        axes[2].plot(jx, [r.join_rounds for r in sel if r.join_rounds is not None], style,
                     alpha=0.5, label=f"join storm, {label}")  # fmt: skip
    titles = ("UDP bytes / node / s", "crash -> dead everywhere (s)", "gossip rounds to converge")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    PNG_OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG_OUT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--window", type=float, default=120.0, help="simulated seconds")
    parser.add_argument("--join-max", type=int, default=1000, help="largest N for join storms")
    args = parser.parse_args()
    rows = run(args.sizes, args.losses, args.window, args.join_max)
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    command = "python benchmarks/gossip_sim.py " + " ".join(
        f"--sizes {' '.join(map(str, args.sizes))} --window {args.window:g} "
        f"--join-max {args.join_max}".split(" ")
    )
    write_markdown(markdown(rows, args.window, command))
    plot(rows)


if __name__ == "__main__":
    main()
