"""Swarm simulation benchmark: time for N hosts to get a blob, upload per host, origin egress.

Runs ``p2preg.swarm.sim`` (a flow-level network, max-min fair links, the node's own
``Scheduler`` and ``UploadPolicy``) on named scenarios and writes ``docs/benchmarks/
swarm_sim.json``, the table in ``docs/benchmarks-swarm.md`` (its ``swarm-sim`` section) and
``docs/benchmarks/swarm_sim.png`` (completion CDF; bytes uploaded per host). Deterministic.

Scenarios (``--scenario``, repeatable):
- ``lab``: the lab's shapes (issue 9): N=8, 128/64 Mbit/s, 32 MiB; N=16, 64/32 Mbit/s,
  16 MiB; the swarm and today's star design (the star checks the network model against the
  lab's measured 13.4 s and 28.8 s), create phase, and the swarm's update phase (the owner
  and one host hold the blob, the others pull at once; x one transfer at the host link).
- ``kraken``: 3 GB in two 1.5 GB layers (different owners), 300 MB/s links both ways and at the
  origin, for ``--sizes``; ``--piece-mib`` models coarser pieces than the node's 8 MiB (the
  default) and ``--batch-ms`` a coarser rate-update batch than 0.5 ms: cheaper, and measured
  against the exact model in ``docs/benchmarks-swarm.md`` ("Simulator speed").
- ``pieces``: the kraken case at ``--sizes`` with the node's pieces and coarser ones (does the
  granularity change the result?).

    .venv/bin/python -m benchmarks.swarm_sim --scenario lab
    .venv/bin/python -m benchmarks.swarm_sim --scenario kraken --sizes 100 --batch-ms 2 \\
        --set missing_backoff_s=0.5

Not a test: nothing is asserted here. Must not import asyncio or sockets.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import machine_info, update_docs_section, write_results
from p2preg.swarm.pieces import piece_bytes
from p2preg.swarm.scheduler import SchedulerConfig
from p2preg.swarm.sim import BlobSpec, SimResult, Topology, star, swarm
from p2preg.swarm.uploads import UploadConfig

ROOT = Path(__file__).resolve().parent.parent
JSON_OUT = ROOT / "docs" / "benchmarks" / "swarm_sim.json"
PNG_OUT = ROOT / "docs" / "benchmarks" / "swarm_sim.png"
MD_OUT = ROOT / "docs" / "benchmarks-swarm.md"
SECTION = "swarm-sim"
MBIT = 1e6 / 8
LAB = {8: (128, 64, 32 << 20, 13.4), 16: (64, 32, 16 << 20, 28.8)}
"""N -> (host Mbit/s, origin Mbit/s, blob bytes, lab's all-done seconds with today's star)."""
KRAKEN_LINK = 300e6
KRAKEN_LAYER = 1_500_000_000
BATCH_MS = 0.5
"""The exact model's rate-update batch (``SwarmSim.batch_s``); ``--batch-ms`` coarsens it."""


@dataclass
class Row:
    scenario: str
    design: str
    nodes: int
    piece_mib: float
    one_transfer_s: float
    """The unit of the ratios: one transfer of the whole image at the bottleneck rate."""
    p50_s: float
    p99_s: float
    max_s: float
    max_upload_copies: float
    origin_copies: float
    requests: dict[str, int]
    events: int
    cpu_s: float
    lab_s: float | None = None
    settings: dict[str, float] = field(default_factory=dict)
    completion_s: list[float] = field(default_factory=list)
    upload_copies: list[float] = field(default_factory=list)


def _row(scenario: str, design: str, nodes: int, piece: int, one_s: float, result: SimResult,
         answers: dict[str, int], cpu_s: float, **extra: object) -> Row:
    return Row(
        scenario, design, nodes, piece / (1 << 20), one_s,
        result.quantile(0.5), result.quantile(0.99), result.quantile(1.0),
        result.max_upload_copies(), result.origin_copies(), dict(answers), result.events,
        cpu_s, completion_s=result.completion(),
        upload_copies=sorted(h.uploaded_bytes / result.blob_bytes for h in result.hosts),
        **extra,  # type: ignore[arg-type]
    )


def lab(seed: int, sched: SchedulerConfig, up: UploadConfig,
        settings: dict[str, float], rtt_s: float = 0.001) -> list[Row]:
    rows = []
    for n, (host, origin, size, lab_s) in LAB.items():
        topo = Topology(host * MBIT, host * MBIT, origin * MBIT, rtt_s=rtt_s)
        piece = piece_bytes(size)
        blob = [BlobSpec.of("sha256:" + "1a" * 32, size, piece)]
        one = size / (origin * MBIT)
        for design in ("star", "swarm", "swarm update"):
            t = time.process_time()
            sim = star(seed, n, topo, blob) if design == "star" else \
                swarm(seed, n, topo, blob, scheduler=sched, uploads=up,
                      holders=2 if design == "swarm update" else 0)
            result = sim.run(until_s=600)
            # The update phase (the owner and one host hold the blob, the others pull) is
            # measured against one transfer at the host link, as the lab's update rows are.
            one_s = size / (host * MBIT) if design == "swarm update" else one
            rows.append(_row("lab", design, n, piece, one_s, result, sim.answers,
                             time.process_time() - t, lab_s=lab_s if design == "star" else None,
                             settings={} if design == "star" else settings))
    return rows


def kraken(seed: int, sizes: list[int], pieces_mib: list[float], sched: SchedulerConfig,
           up: UploadConfig, settings: dict[str, float],
           scenario: str = "kraken", batch_ms: float = BATCH_MS,
           rtt_s: float = 0.001) -> list[Row]:
    topo = Topology(KRAKEN_LINK, KRAKEN_LINK, KRAKEN_LINK, rtt_s=rtt_s)
    one = 2 * KRAKEN_LAYER / KRAKEN_LINK
    rows = []
    for n in sizes:
        for mib in pieces_mib:
            piece = int(mib * (1 << 20))
            blobs = [BlobSpec.of("sha256:" + c * 64, KRAKEN_LAYER, piece) for c in "ab"]
            t = time.process_time()
            sim = swarm(seed, n, topo, blobs, scheduler=sched, uploads=up,
                        batch_s=batch_ms / 1000)
            result = sim.run(until_s=20 * one)
            rows.append(_row(scenario, "swarm", n, piece, one, result, sim.answers,
                             time.process_time() - t, settings=settings))
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: Row) -> str:
    def x(v: float) -> str:
        return f"{v:.2f} s ({v / r.one_transfer_s:.2f}x)" if v != float("inf") else "not done"

    lab = f"{r.lab_s:.1f} s ({(r.max_s - r.lab_s) / r.lab_s:+.0%})" if r.lab_s else "-"
    req = r.requests
    per_piece = req.get("missing", 0) / max(1, req.get("served", 0))
    return (f"| {r.scenario} | {r.design} | {r.nodes} | {r.piece_mib:g} | {x(r.p50_s)} | "
            f"{x(r.p99_s)} | {x(r.max_s)} | {r.max_upload_copies:.2f} | {r.origin_copies:.2f} | "
            f"{lab} | {per_piece:.1f} | {_knobs(r.settings)} | {r.cpu_s:.0f} |")


def _knobs(settings: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in settings.items()) or "defaults"


def markdown(rows: list[Row], command: str) -> str:
    head = ("| scenario | design | N | piece MiB | p50 | p99 | max (all done) | max upload "
            "(copies) | origin egress (copies) | lab all done | 404s per served piece | settings | "
            "CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    note = (f"Commands: {command} (Python {platform.python_version()}, one thread; "
            "CPU on a shared 2-core machine).")
    return "\n".join([note, "", head, *(_line(r) for r in rows)])


def plot(rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        knobs = _knobs(r.settings)
        label = f"{r.scenario} {r.design} N={r.nodes} {r.piece_mib:g} MiB" + (
            f" ({knobs})" if r.settings else "")
        done = [t / r.one_transfer_s for t in r.completion_s if t != float("inf")]
        axes[0].step(done, [(i + 1) / len(r.completion_s) for i in range(len(done))],
                     where="post", label=label)
        hosts = len(r.upload_copies)
        axes[1].plot([(i + 1) / hosts for i in range(hosts)], r.upload_copies, label=label)
    axes[0].set_xlabel("completion / one transfer at the bottleneck rate")
    axes[0].set_ylabel("fraction of hosts done")
    axes[0].set_xscale("log")
    axes[1].set_xlabel("fraction of hosts, by bytes uploaded")
    axes[1].set_ylabel("copies uploaded")
    axes[1].set_yscale("symlog")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    PNG_OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG_OUT, dpi=110)


def _settings(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", choices=("lab", "kraken", "pieces"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100])
    parser.add_argument("--piece-mib", type=float, nargs="+", default=[8.0],
                        help="kraken: the model's piece size (the node's: 8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-ms", type=float, default=BATCH_MS,
                        help="kraken: events within this many ms share one rate update and "
                        "one round of requests per host (the model's reaction time)")
    parser.add_argument("--rtt-ms", type=float, default=1.0,
                        help="the per-hop round trip of the model (1 ms; the lab's tbf queues "
                        "put ~100 ms on a loaded hop: docs/benchmarks-swarm.md)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE",
                        help="SchedulerConfig/UploadConfig fields to override")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in the JSON (runs with other settings)")
    args = parser.parse_args()
    settings = _settings(args.set)
    if args.batch_ms != BATCH_MS:
        settings["batch_ms"] = args.batch_ms
    if args.seed != 1:
        settings["seed"] = args.seed
    if args.rtt_ms != 1.0:
        settings["rtt_ms"] = args.rtt_ms
    sched_keys = set(SchedulerConfig.__dataclass_fields__)
    sched = SchedulerConfig(**{k: (int(v) if isinstance(getattr(SchedulerConfig(), k), int)
                                   else v) for k, v in settings.items() if k in sched_keys})
    up = UploadConfig(**{k: (int(v) if isinstance(getattr(UploadConfig(), k), int) else v)
                         for k, v in settings.items() if k not in sched_keys
                         and k not in ("batch_ms", "seed", "rtt_ms")})
    old = json.loads(JSON_OUT.read_text()) if args.append and JSON_OUT.exists() else {}
    rows: list[Row] = [Row(**r) for r in old.get("rows", [])]
    for scenario in args.scenario or ["lab"]:
        if scenario == "lab":
            rows += lab(args.seed, sched, up, settings, rtt_s=args.rtt_ms / 1000)
        elif scenario == "kraken":
            rows += kraken(args.seed, args.sizes, args.piece_mib, sched, up, settings,
                           batch_ms=args.batch_ms, rtt_s=args.rtt_ms / 1000)
        else:
            rows += kraken(args.seed, args.sizes, list(dict.fromkeys([8.0, *args.piece_mib])),
                           sched, up, settings, "pieces")
    command = "`benchmarks/swarm_sim.py " + " ".join(
        f"--scenario {s}" for s in args.scenario or ["lab"]
    ) + (f" --sizes {' '.join(map(str, args.sizes))} --piece-mib "
         f"{' '.join(f'{p:g}' for p in args.piece_mib)}" if args.scenario != ["lab"] else "") + (
        f" --set {' '.join(args.set)}" if args.set else "") + (
        f" --batch-ms {args.batch_ms:g}" if args.batch_ms != BATCH_MS else "") + (
        f" --seed {args.seed}" if args.seed != 1 else "") + (
        f" --rtt-ms {args.rtt_ms:g}" if args.rtt_ms != 1.0 else "") + "`"
    if old.get("command"):
        command = f"{old['command']}, then {command}"
    table = markdown(rows, command)
    print(table)
    write_results(JSON_OUT, {"command": command, "machine": machine_info(),
                             "rows": [asdict(r) for r in rows]})
    update_docs_section(MD_OUT, SECTION, table)
    plot(rows)


if __name__ == "__main__":
    main()
