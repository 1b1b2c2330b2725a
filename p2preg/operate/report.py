"""The fan-out report, one code for the field (``p2preg fanout``) and the lab
(``benchmarks/fanout.py --lab``), so their numbers mean the same thing.

Owns: ``percentile`` (nearest rank), ``time_stats`` (time to all hosts, p50/p99/max per host, from
each host's seconds since the common start), ``summarize_cluster_pull`` (one
``coordinator.ClusterPull`` answer as a fan-out row: those times, origin egress as a multiple of
the image from the nodes' own upstream byte counters, the bytes each node uploaded to peers),
``format_runs`` (the printed table) and ``plot_timeline`` (per-node bars, matplotlib: the
``bench`` extra).

Definitions: a host's time is from the common start instant to its last byte, measured on the
host; *time to all* is the largest of them over the hosts that succeeded (``all_done_s``);
failed hosts are listed apart and not counted in the times.

Pure apart from ``plot_timeline`` writing its file; must not import aiohttp or the node.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def time_stats(host_s: Mapping[Any, float]) -> dict[str, float | None]:
    """``all_done_s``, ``host_p50_s`` (median), ``host_p99_s``, ``host_max_s``, rounded to ms;
    None when no host finished."""
    values = list(host_s.values())
    if not values:
        return {"all_done_s": None, "host_p50_s": None, "host_p99_s": None, "host_max_s": None}
    return {"all_done_s": round(max(values), 3),
            "host_p50_s": round(statistics.median(values), 3),
            "host_p99_s": round(percentile(values, 99), 3),
            "host_max_s": round(max(values), 3)}


def summarize_cluster_pull(pull: Mapping[str, Any]) -> dict[str, Any]:
    """One fan-out run from a cluster pull's JSON (``GET /_p2preg/v1/cluster-pulls/<id>``)."""
    host_s: dict[str, float] = {}
    failed: dict[str, str] = {}
    uploaded: dict[str, int] = {}
    by_source = {"local": 0, "peer": 0, "upstream": 0}
    from_upstream = 0
    image_bytes = 0
    timeline: dict[str, tuple[float, float]] = {}
    at = pull.get("at")
    for node in pull["nodes"]:
        progress = node.get("progress") or {}
        counters = progress.get("counters") or {}
        uploaded[node["name"]] = int(counters.get("uploaded", 0))
        from_upstream += int(counters.get("from_upstream", 0))
        if node["state"] != "done":
            failed[node["name"]] = node.get("error") or node["state"]
            continue
        image_bytes = max(image_bytes, int(progress.get("bytes_total", 0)))
        for source, nbytes in (progress.get("bytes_by_source") or {}).items():
            by_source[source] = by_source.get(source, 0) + int(nbytes)
        delay = 0.0
        if at is not None and progress.get("started_at") is not None:
            delay = max(0.0, float(progress["started_at"]) - float(at))
        seconds = float(progress.get("seconds") or 0.0)
        host_s[node["name"]] = round(delay + seconds, 3)
        timeline[node["name"]] = (round(delay, 3), round(delay + seconds, 3))
    row: dict[str, Any] = {"hosts": len(pull["nodes"]), "ok_hosts": len(host_s),
                           "failed_hosts": failed, **time_stats(host_s), "host_s": host_s,
                           "image_bytes": image_bytes, "bytes_by_source": by_source,
                           "origin_bytes": from_upstream,
                           "origin_egress_x_image": round(from_upstream / image_bytes, 2)
                           if image_bytes else None,
                           "uploaded_bytes_per_host": uploaded, "timeline": timeline}
    return row


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.3f} s"


def format_runs(image: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """The table ``p2preg fanout`` prints: one line per run, then per host of the last run."""
    lines = [f"fan-out of {image}: {runs[0]['hosts'] if runs else 0} nodes", "",
             f"{'run':>3}  {'time to all':>12}  {'p50':>9}  {'p99':>9}  "
             f"{'origin egress':>13}  failed"]
    for i, run in enumerate(runs, 1):
        egress = run["origin_egress_x_image"]
        lines.append(f"{i:>3}  {_s(run['all_done_s']):>12}  {_s(run['host_p50_s']):>9}  "
                     f"{_s(run['host_p99_s']):>9}  "
                     f"{'-' if egress is None else f'{egress:.2f} x image':>13}  "
                     f"{', '.join(sorted(run['failed_hosts'])) or '-'}")
    if runs:
        last = runs[-1]
        lines += ["", f"{'node':<20} {'time':>10} {'uploaded to peers':>18}  failure"]
        for name in sorted(last["uploaded_bytes_per_host"]):
            lines.append(f"{name:<20} {_s(last['host_s'].get(name)):>10} "
                         f"{last['uploaded_bytes_per_host'][name] / MIB:>14.1f} MiB  "
                         f"{last['failed_hosts'].get(name, '')}")
    return "\n".join(lines) + "\n"


def plot_timeline(image: str, runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Per node, a bar from its start to its last byte (each run a row group) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"run {i} · {name}", span) for i, run in enumerate(runs, 1)
            for name, span in sorted(run["timeline"].items())]
    fig, axis = plt.subplots(figsize=(8, 0.9 + 0.28 * max(1, len(rows))))
    for y, (_, (start, end)) in enumerate(rows):
        axis.barh(y, end - start, left=start, height=0.6, color="#2a7ab9")
    axis.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("seconds since the common start")
    axis.set_title(f"p2preg fanout: {image}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
