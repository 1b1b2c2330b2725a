"""Kraken's case in the swarm simulator, traced: where each host's downlink under-runs, and why.

Runs ``p2preg.swarm.sim.swarm`` on Kraken's case (3 GB in two 1.5 GB layers, 300 MB/s links
both ways and at the origin, the node's 8 MiB pieces) with a ``p2preg.swarm.trace.LagTrace``
attached, prints per run the completion (p50/p99/max), the largest upload and the idle time
of the hosts' downlinks by cause (``swarm.trace.CAUSES``: mean over the non-owners, and for
the median host), and writes ``docs/benchmarks/swarm_lag.json`` and a plot
``docs/benchmarks/swarm_lag[-LABEL].png`` (idle so far per host over time; the causes over
time; each host's idle by cause).

    .venv/bin/python -m benchmarks.swarm_lag --sizes 20
    .venv/bin/python -m benchmarks.swarm_lag --sizes 20 --known-fetchers 19 --label gossip
    .venv/bin/python -m benchmarks.swarm_lag --sizes 20 --set window_pieces=64

Not a test: nothing is asserted here. Deterministic (seeded). Must not import asyncio or
sockets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.swarm_sim import KRAKEN_LAYER, KRAKEN_LINK, _settings
from p2preg.swarm.scheduler import SchedulerConfig
from p2preg.swarm.sim import BlobSpec, Topology, swarm
from p2preg.swarm.trace import CAUSES, LagTrace
from p2preg.swarm.uploads import UploadConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"
ONE_S = 2 * KRAKEN_LAYER / KRAKEN_LINK


def _configs(settings: dict[str, float]) -> tuple[SchedulerConfig, UploadConfig]:
    unknown = set(settings) - set(SchedulerConfig.__dataclass_fields__) \
        - set(UploadConfig.__dataclass_fields__)
    if unknown:  # a removed knob must not run as the defaults under its name
        raise SystemExit(f"--set: no such knob: {', '.join(sorted(unknown))}")

    def build(cls: Any) -> Any:
        keys = set(cls.__dataclass_fields__)
        return cls(**{k: (int(v) if isinstance(getattr(cls(), k), int) else v)
                      for k, v in settings.items() if k in keys})

    return build(SchedulerConfig), build(UploadConfig)


def run(n: int, settings: dict[str, float], known_fetchers: int, seed: int,
        piece_mib: float = 8.0) -> tuple[LagTrace, dict[str, Any]]:
    sched, up = _configs(settings)
    piece = int(piece_mib * (1 << 20))
    blobs = [BlobSpec.of("sha256:" + c * 64, KRAKEN_LAYER, piece) for c in "ab"]
    topo = Topology(KRAKEN_LINK, KRAKEN_LINK, KRAKEN_LINK, rtt_s=0.001)
    sim = swarm(seed, n, topo, blobs, scheduler=sched, uploads=up, known_fetchers=known_fetchers)
    trace = LagTrace(sim)
    t = time.process_time()
    result = trace.run(until_s=20 * ONE_S)
    cpu = time.process_time() - t
    owners = set(sim.owners.values())
    others = [h for h in trace.hosts.values() if h.name not in owners]
    by_done = sorted(others, key=lambda h: h.done_s if h.done_s is not None else float("inf"))
    median = by_done[len(by_done) // 2]
    summary = {
        "nodes": n, "settings": settings, "known_fetchers": known_fetchers, "seed": seed,
        "p50_x": result.quantile(0.5) / ONE_S, "p99_x": result.quantile(0.99) / ONE_S,
        "max_x": result.quantile(1.0) / ONE_S,
        "max_upload_copies": result.max_upload_copies(),
        "origin_copies": result.origin_copies(),
        "owners_done_s": sorted(trace.hosts[o].done_s or float("inf") for o in owners),
        "layers_at_owner_s": sorted(
            sim.hosts[o].fills[d].done_at or float("inf") for d, o in sim.owners.items()),
        "mean_idle_s": {c: statistics.fmean(h.idle_s[c] for h in others) for c in CAUSES},
        "median_host": median.name, "median_idle_s": dict(median.idle_s),
        "up_busy_to_10s": trace.up_busy(ONE_S),
        "answers": dict(sim.answers), "cpu_s": cpu,
    }
    return trace, summary


def line(label: str, s: dict[str, Any]) -> str:
    idle = " | ".join(f"{s['mean_idle_s'][c]:.2f}" for c in CAUSES)
    total = sum(s["mean_idle_s"].values())
    return (f"| {label} | {s['nodes']} | {s['p50_x']:.2f}x | {s['p99_x']:.2f}x | "
            f"{s['max_x']:.2f}x | {s['max_upload_copies']:.2f} | "
            f"{'/'.join(f'{t:.1f}' for t in s['layers_at_owner_s'])} | {s['up_busy_to_10s']:.0%} | "
            f"{total:.2f} | {idle} |")


HEAD = ("| run | N | p50 | p99 | max | max upload | layers at owners (s) | "
        "uplinks busy (0-10 s) | "
        "downlink idle s (mean host) | " + " | ".join(CAUSES) + " |\n|"
        + "---|" * (9 + len(CAUSES)))


def plot(trace: LagTrace, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    owners = {n for n, h in trace.hosts.items() if h.owner_of}
    for name in trace.hosts:
        style = {"color": "tab:red", "lw": 1.5, "label": f"{name} (owner)"} \
            if name in owners else {"color": "grey", "lw": 0.6, "alpha": 0.6}
        axes[0].plot(trace.times, trace.idle_s(name), **style)  # type: ignore[arg-type]
    axes[0].set_xlabel("simulated time (s)")
    axes[0].set_ylabel("downlink idle so far (s)")
    axes[0].set_title("each host: t - received / link rate")
    starts, causes = trace.causes_over_time(0.25)
    hosts = len(trace.hosts)
    colors = [plt.get_cmap("tab20")(i) for i in range(len(CAUSES))]
    axes[1].stackplot(starts, *[[v / hosts for v in causes[c]] for c in CAUSES],
                      labels=CAUSES, colors=colors, step="post")
    axes[1].set_xlabel("simulated time (s)")
    axes[1].set_ylabel("idle downlink, fraction of all hosts")
    axes[1].set_title("why the downlinks idle, over time")
    ranked = sorted(trace.hosts.values(),
                    key=lambda h: h.done_s if h.done_s is not None else float("inf"))
    bottom = [0.0] * len(ranked)
    for cause, color in zip(CAUSES, colors, strict=True):
        values = [h.idle_s[cause] for h in ranked]
        axes[2].bar(range(len(ranked)), values, bottom=bottom, label=cause, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[2].set_xlabel("hosts, by finish")
    axes[2].set_ylabel("downlink idle (s)")
    axes[2].set_title("each host's idle time by cause")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE",
                        help="SchedulerConfig/UploadConfig fields to override")
    parser.add_argument("--known-fetchers", type=int, default=0,
                        help="other fetchers each host knows at the start (gossip's)")
    parser.add_argument("--label", default="", help="run name (plot file suffix)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    settings = _settings(args.set)
    json_path = OUT / "swarm_lag.json"
    print(HEAD)
    for n in args.sizes:
        trace, summary = run(n, settings, min(args.known_fetchers, n - 2), args.seed)
        label = f"{args.label or 'defaults'} N={n}"
        print(line(label, summary), flush=True)
        runs = json.loads(json_path.read_text()) if json_path.exists() else {}
        runs[label] = summary
        json_path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
        if not args.no_plot:
            suffix = f"-{args.label}" if args.label else ""
            plot(trace, OUT / f"swarm_lag{suffix}-n{n}.png", f"Kraken's case, N={n}, {label}")


if __name__ == "__main__":
    main()
