"""Pull fan-out on the multi-host lab (``benchmarks/lab.py``): the ``--lab`` mode of
``benchmarks/fanout.py``.

Owns the lab scenarios, their report (JSON, a markdown table, plots) and ``CASES`` (the issue's
link and blob sizes). Each case is N hosts with capped links (host up = down = ``host_mbit``,
origin ``origin_mbit``) and a blob of ``blob_mib``; for each cluster kind (``p2preg``: one
gossip cluster; ``p2preg-solo``: independent p2preg mirrors; ``distribution``: one Distribution
proxy per host), started cold:

- **create**: a new blob is pushed to the origin; every host GETs it through its own node at the
  same instant;
- **update**: another new blob; host 0 pulls it alone first, then the N-1 others at once;
- **kill** (``p2preg`` only): like create, and 1.5 s in the digest's owner (the node receiving
  from the upstream, read from the metrics) or a peer (another node, the one that has uploaded
  the most by then) is SIGKILLed; the others' times and the origin GETs are reported.

Per run: time until all hosts are done (from the common start), per-host p50/max, origin blob
GETs and bytes (the origin's log), bytes each host uploaded to peers and received by source
(``p2preg_p2p_sent_bytes_total``, ``p2preg_fill_received_bytes_total``), and per case the time of
one origin transfer and one host-link transfer of the blob, computed from the caps and measured
(a raw TCP transfer over the same links, no node involved).

The per-run times (``all_done_s``, ``host_p50_s``, ``host_p99_s``, ``host_max_s``) come from
``p2preg.operate.report.time_stats``, the code ``p2preg fanout`` reports a real cluster with, so
lab and field numbers mean the same. Imports nothing else from p2preg: the nodes are separate
processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, machine_info
from benchmarks.lab import CLUSTERS, Lab, PullResult, link_rate_bytes_s
from p2preg.operate.report import time_stats

SENT = "p2preg_p2p_sent_bytes_total"
RECEIVED = "p2preg_fill_received_bytes_total"
SERVED = "p2preg_p2p_served_total"
#: The answers to piece requests, summed over the hosts per phase (the swarm's chatter).
PIECE_ANSWERS = ("piece", "piece_cut_through", "piece_busy", "piece_missing")
#: Assigned children's answers (coordinated forwarding), summed: how many, how many followed an
#: earlier one to the same child, the ms the child's link sat idle before those requests came,
#: and the ms from arrival to sending (nodes without them read 0).
CHILD_ANSWERS = ("piece_child", "piece_child_next", "piece_child_gap_ms", "piece_child_wait_ms")
KILL_AFTER_S = 1.5
OWNER_PROBE_AFTER_S = 1.0


@dataclass(frozen=True)
class Case:
    """One lab setting: N hosts, link caps in Mbit/s, the blob size in MiB."""

    nodes: int
    host_mbit: float
    origin_mbit: float
    blob_mib: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """``N:HOST_MBIT:ORIGIN_MBIT:BLOB_MIB`` (``16:64:32:16``)."""
        n, host, origin, blob = text.split(":")
        return cls(int(n), float(host), float(origin), int(blob))

    def __str__(self) -> str:
        return f"{self.nodes}:{self.host_mbit:g}:{self.origin_mbit:g}:{self.blob_mib}"


#: The issue's settings (host link 2x the origin link), and smaller N on the N=8 links.
CASES = {n: Case.parse(text) for n, text in (
    (1, "1:128:64:32"), (4, "4:128:64:32"), (8, "8:128:64:32"), (16, "16:64:32:16"),
)}  # fmt: skip


# ------------------------------------------------------------------------------ measurements


def _sample_hosts(lab: Lab, hosts: Sequence[int]) -> dict[int, dict[str, float]]:
    """Per host: bytes sent to peers, received from peers and from upstream (0 for nodes
    without these metrics, or dead ones)."""
    out: dict[int, dict[str, float]] = {}
    threads = []

    def one(i: int) -> None:
        try:
            samples = lab.metrics(i)
        except (OSError, RuntimeError):
            samples = []

        def total(name: str, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name
                       and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip

        out[i] = {"sent": total(SENT), "from_peer": total(RECEIVED, source="peer"),
                  "from_upstream": total(RECEIVED, source="upstream"),
                  "cpu_s": lab.cpu_seconds(i),
                  "wait_s": lab.runqueue_wait_seconds(i)}  # fmt: skip
        for kind in PIECE_ANSWERS + CHILD_ANSWERS:
            out[i][f"served_{kind}"] = total(SERVED, kind=kind)

    for i in hosts:
        thread = threading.Thread(target=one, args=(i,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(30)
    return out


def _delta(after: dict[int, dict[str, float]], before: dict[int, dict[str, float]],
           key: str) -> list[int]:  # fmt: skip
    return [int(after[i][key] - before.get(i, {}).get(key, 0.0)) for i in sorted(after)]


def _summary(lab: Lab, results: Sequence[PullResult], digest: str, size: int,
             before: dict[int, dict[str, float]], gets_before: tuple[int, int],
             metrics: bool) -> dict[str, Any]:  # fmt: skip
    t0 = min(r.started for r in results)
    ok = [r for r in results if r.digest_ok and r.nbytes == size]
    host_s = {r.host: round(r.finished - t0, 3) for r in ok}
    gets, nbytes = lab.origin_blob_gets(digest)
    row: dict[str, Any] = {
        "hosts": len(results),
        "lab_hosts": lab.n_hosts,
        "ok_hosts": len(ok),
        "failed_hosts": {r.host: r.error or f"status {r.status}, {r.nbytes} bytes"
                         for r in results if r not in ok},
        **time_stats(host_s),
        "host_s": host_s,
        "origin_blob_gets": gets - gets_before[0],
        "origin_bytes_x_blob": round((nbytes - gets_before[1]) / size, 2),
    }
    if metrics:
        after = _sample_hosts(lab, range(lab.n_hosts))
        sent = _delta(after, before, "sent")
        row["uploaded_bytes_per_host"] = sent
        row["max_upload_x_blob"] = round(max(sent) / size, 2)
        row["uploading_hosts"] = sum(1 for s in sent if s > size // 100)
        row["received_from_peer_bytes"] = sum(_delta(after, before, "from_peer"))
        row["received_from_upstream_bytes"] = sum(_delta(after, before, "from_upstream"))
        row["piece_answers"] = {kind: sum(_delta(after, before, f"served_{kind}"))
                                for kind in PIECE_ANSWERS}  # fmt: skip
        row["child_answers"] = {kind: sum(_delta(after, before, f"served_{kind}"))
                                for kind in CHILD_ANSWERS}  # fmt: skip
        # a killed node reads 0 afterwards: its delta is 0, not negative
        cpu = [round(max(0.0, after[i]["cpu_s"] - before.get(i, {}).get("cpu_s", 0.0)), 2)
               for i in sorted(after)]  # fmt: skip
        row["node_cpu_s"] = cpu
        row["node_cpu_s_max"] = max(cpu)
        row["node_cpu_s_total"] = round(sum(cpu), 2)
        delivered_mib = len(ok) * size / MIB
        row["cpu_ms_per_mib"] = round(1000 * sum(cpu) / delivered_mib, 1) if ok else None
        row["node_runqueue_wait_s"] = [
            round(max(0.0, after[i]["wait_s"] - before.get(i, {}).get("wait_s", 0.0)), 2)
            for i in sorted(after)]  # fmt: skip
    return row


def _phase(lab: Lab, hosts: Sequence[int], digest: str, size: int,
           metrics: bool) -> dict[str, Any]:  # fmt: skip
    before = _sample_hosts(lab, range(lab.n_hosts)) if metrics else {}
    gets_before = lab.origin_blob_gets(digest)
    results = lab.pull_many(hosts, digest, timeout_s=240)
    return _summary(lab, results, digest, size, before, gets_before, metrics)


def _owner_now(lab: Lab) -> int | None:
    """The node receiving the blob from the upstream right now (the digest's owner)."""
    sample = _sample_hosts(lab, range(lab.n_hosts))
    fetching = [i for i, s in sample.items() if s["from_upstream"] > 0]
    return fetching[0] if fetching else None


def _kill_run(lab: Lab, digest: str, size: int, victim: str) -> dict[str, Any]:
    """Create phase with a SIGKILL 1.5 s in: of the owner (``victim="owner"``) or of the
    non-owner that has uploaded the most by then (``"peer"``)."""
    before = _sample_hosts(lab, range(lab.n_hosts))
    gets_before = lab.origin_blob_gets(digest)
    box: dict[str, Any] = {}
    puller = threading.Thread(
        target=lambda: box.setdefault("results", lab.pull_many(range(lab.n_hosts), digest,
                                                               timeout_s=240)))  # fmt: skip
    start = time.monotonic()
    puller.start()
    time.sleep(OWNER_PROBE_AFTER_S)
    owner = _owner_now(lab)
    killed = owner
    if victim == "peer":
        sample = _sample_hosts(lab, range(lab.n_hosts))
        others = [i for i in range(lab.n_hosts) if i != owner]
        killed = max(others, key=lambda i: (sample[i]["sent"], -i))
    time.sleep(max(0.0, start + KILL_AFTER_S - time.monotonic()))
    if killed is not None:
        lab.kill(killed)
    puller.join(300)
    results = [r for r in box["results"] if r.host != killed]
    row = _summary(lab, results, digest, size, before, gets_before, metrics=True)
    row.update(victim=victim, killed_host=killed, owner=owner)
    return row


# ----------------------------------------------------------------------------------- one case


PHASES = ("create", "update", "kill")


def run_case(case: Case, clusters: Sequence[str], phases: Sequence[str], seed: int,
             node_src: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The scenarios ``phases`` (of ``PHASES``) of ``case`` on one lab (the network is built
    once); ``node_src``: the source tree the p2preg nodes run (this one by default)."""
    size = case.blob_mib * MIB
    out: dict[str, Any] = {"case": str(case), "nodes": case.nodes, "host_mbit": case.host_mbit,
                           "origin_mbit": case.origin_mbit, "blob_MiB": case.blob_mib}  # fmt: skip
    origin_rate = link_rate_bytes_s(min(case.origin_mbit, case.host_mbit))
    host_rate = link_rate_bytes_s(case.host_mbit)
    src = {"node_src": node_src} if node_src is not None else {}
    with Lab(case.nodes, host_mbit=case.host_mbit, origin_mbit=case.origin_mbit, **src) as lab:
        out["one_origin_transfer_s"] = {
            "computed": round(size / origin_rate, 2),
            "measured": round(lab.measure_transfer("o", "h0", size), 2),
        }
        if case.nodes > 1:
            out["one_host_link_transfer_s"] = {
                "computed": round(size / host_rate, 2),
                "measured": round(lab.measure_transfer("h0", "h1", size), 2),
            }
        for k, cluster in enumerate(clusters):
            metrics = cluster != "distribution"
            lab.start_nodes(cluster)
            try:
                result: dict[str, Any] = {}
                if "create" in phases:
                    digest = lab.push_blob(size, seed + 10 * k)
                    result["create"] = _phase(lab, range(case.nodes), digest, size, metrics)
                    print(f"  {case} {cluster} create: {_brief(result['create'])}", flush=True)
                if "update" in phases and case.nodes > 1:
                    digest = lab.push_blob(size, seed + 10 * k + 1)
                    lab.pull(0, digest)
                    result["update"] = _phase(lab, range(1, case.nodes), digest, size, metrics)
                    print(f"  {case} {cluster} update: {_brief(result['update'])}", flush=True)
            finally:
                lab.stop_nodes()
            out[cluster] = result
        if "kill" in phases and "p2preg" in clusters and case.nodes > 2:
            out["kill"] = {}
            for j, victim in enumerate(("owner", "peer")):
                lab.start_nodes("p2preg")
                try:
                    digest = lab.push_blob(size, seed + 100 + j)
                    out["kill"][victim] = _kill_run(lab, digest, size, victim)
                    print(f"  {case} kill {victim}: {_brief(out['kill'][victim])}", flush=True)
                finally:
                    lab.stop_nodes()
    one = out["one_origin_transfer_s"]["computed"]
    for cluster in clusters:
        create = out[cluster].get("create")
        if create and create["all_done_s"] is not None:
            create["x_one_origin_transfer"] = round(create["all_done_s"] / one, 2)
        update = out[cluster].get("update")
        if update and update["all_done_s"] is not None and case.nodes > 1:
            update["x_one_host_link_transfer"] = round(
                update["all_done_s"] / out["one_host_link_transfer_s"]["computed"], 2)
    return out


def _brief(row: dict[str, Any]) -> str:
    keys = ("all_done_s", "host_p50_s", "origin_blob_gets", "max_upload_x_blob", "ok_hosts",
            "failed_hosts", "killed_host", "node_cpu_s_total", "cpu_ms_per_mib")  # fmt: skip
    return ", ".join(f"{k}={row[k]}" for k in keys if k in row)


def run_lab(args: argparse.Namespace) -> dict[str, Any]:
    cases = [Case.parse(c) for c in args.lab_case] if args.lab_case else [
        CASES.get(n) or Case(n, 128, 64, 32) for n in args.nodes]  # fmt: skip
    phases = [p for p in args.phases if p != "kill" or not args.no_kill]
    results = []
    for case in cases:
        if args.ab is not None:  # alternate the base tree and this one, pair by pair
            for pair in range(1, args.repeat + 1):
                for side, src in (("base", args.ab), ("this", args.node_src)):
                    print(f"lab case {case}, A/B pair {pair}: {side}", flush=True)
                    row = run_case(case, args.clusters, phases, args.seed, src)
                    results.append({**row, "ab_side": side, "ab_pair": pair})
            continue
        print(f"lab case {case}", flush=True)
        results.append(run_case(case, args.clusters, phases, args.seed, args.node_src))
    return {
        "benchmark": "fanout-lab",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.fanout " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "label": args.label,
        "ab_base": None if args.ab is None else f"{args.ab} ({args.ab_label or 'base'})",
        "results": results,
    }


# -------------------------------------------------------------------------------------- report


def _s(value: Any) -> str:
    return "-" if value is None else f"{value} s"


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"### {report['label'] or 'Lab run'} ({report['when']})",
        "",
        f"{machine['cpus']} CPUs (load at start {machine['loadavg_at_start']}), command: "
        f"`{report['command']}`. Times from the common start until the last byte; "
        "\"x\" columns divide by one transfer of the blob at the cap (computed).",
        "",
        "| N | host / origin link | blob | one origin / host-link transfer (computed; measured) "
        "| cluster | phase | all done | host p50 / max | x one transfer | origin GETs (x blob) "
        "| max upload (x blob) | hosts that uploaded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        origin, link = row["one_origin_transfer_s"], row.get("one_host_link_transfer_s")
        transfers = f"{origin['computed']} s; {origin['measured']} s"
        if link:
            transfers += f" / {link['computed']} s; {link['measured']} s"
        head = (f"| {row['nodes']} | {row['host_mbit']:g} / {row['origin_mbit']:g} Mbit/s "
                f"| {row['blob_MiB']} MiB | {transfers} ")
        for cluster in CLUSTERS:
            for phase in ("create", "update"):
                r = row.get(cluster, {}).get(phase)
                if r is None:
                    continue
                ratio = r.get("x_one_origin_transfer") or r.get("x_one_host_link_transfer")
                lines.append(
                    head + f"| {cluster} | {phase} | {_s(r['all_done_s'])} "
                    f"| {_s(r['host_p50_s'])} / {_s(r['host_max_s'])} | {ratio} "
                    f"| {r['origin_blob_gets']} ({r['origin_bytes_x_blob']}) "
                    f"| {r.get('max_upload_x_blob', '-')} | "
                    f"{r.get('uploading_hosts', '-')} of {r['lab_hosts']} |")
                head = "| | | | "
        for victim, r in row.get("kill", {}).items():
            lines.append(
                head + f"| p2preg | kill {victim} (host {r['killed_host']}) at {KILL_AFTER_S} s "
                f"| {_s(r['all_done_s'])} | {_s(r['host_p50_s'])} / {_s(r['host_max_s'])} "
                f"| {r['ok_hosts']} of {r['hosts']} ok | {r['origin_blob_gets']} "
                f"({r['origin_bytes_x_blob']}) | {r.get('max_upload_x_blob', '-')} "
                f"| {r.get('uploading_hosts', '-')} of {r['lab_hosts']} |")
    lines += ["", "Against the issue's goals (p2preg cluster):", ""]
    for row in report["results"]:
        lines.append(f"- N={row['nodes']}: " + "; ".join(_goals(row)))
    lines += ["", "Bytes uploaded to peers per host (create phase, p2preg), in MiB:", ""]
    for row in report["results"]:
        create = row.get("p2preg", {}).get("create", {})
        if "uploaded_bytes_per_host" in create:
            per_host = ", ".join(f"{b / MIB:.0f}" for b in create["uploaded_bytes_per_host"])
            lines.append(f"- N={row['nodes']}: {per_host}")
    return "\n".join(lines) + "\n"


def ab_markdown(report: dict[str, Any]) -> str:
    """An A/B run (``--ab DIR``): per run the phase's wall time and the nodes' CPU, base and
    this tree alternating, then the medians and their ratio."""
    machine = report["machine"]
    lines = [
        f"### {report['label'] or 'A/B'} ({report['when']})",
        "",
        f"{machine['cpus']} CPUs (load at start {machine['loadavg_at_start']}), command: "
        f"`{report['command']}`; base: `{report['ab_base']}`. Node CPU: user + system time of "
        "every node process over the phase (`/proc/PID/stat`); per MiB: divided by the bytes "
        "delivered to the pulling clients; run-queue wait: the nodes' main threads runnable "
        "but waiting for a CPU (`/proc/PID/schedstat`), summed.",
        "",
        "| case | pair | tree | phase | all done | x one transfer | node CPU | CPU per MiB "
        "| run-queue wait | piece answers: 206 / cut-through / busy / missing |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    medians: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for row in report["results"]:
        for cluster in CLUSTERS:
            for phase in ("create", "update"):
                r = row.get(cluster, {}).get(phase)
                if r is None or "cpu_ms_per_mib" not in r:
                    continue
                ratio = r.get("x_one_origin_transfer") or r.get("x_one_host_link_transfer")
                answers = " / ".join(str(r["piece_answers"][k]) for k in PIECE_ANSWERS)
                wait = round(sum(r["node_runqueue_wait_s"]), 1)
                lines.append(
                    f"| {row['case']} | {row['ab_pair']} | {row['ab_side']} | {phase} "
                    f"| {_s(r['all_done_s'])} | {ratio} | {r['node_cpu_s_total']} s "
                    f"| {r['cpu_ms_per_mib']} ms | {wait} s | {answers} |")
                m = medians.setdefault((row["case"], phase, row["ab_side"]), {})
                for key, value in (("x", ratio), ("cpu", r["cpu_ms_per_mib"]),
                                   ("wait", wait)):  # fmt: skip
                    if value is not None:
                        m.setdefault(key, []).append(value)
    lines += ["", "Medians (this tree / base):", ""]
    for (case, phase, side), m in sorted(medians.items()):
        if side != "this":
            continue
        base = medians.get((case, phase, "base"), {})

        def med(values: list[float] | None) -> float | None:
            return statistics.median(values) if values else None

        parts = []
        for key, name, unit in (("x", "all done", "x one transfer"),
                                ("cpu", "node CPU", "ms per MiB"),
                                ("wait", "run-queue wait", "s")):  # fmt: skip
            a, b = med(m.get(key)), med(base.get(key))
            change = f" ({a / b:.2f}x)" if a is not None and b else ""
            parts.append(f"{name} {a} vs {b} {unit}{change}")
        lines.append(f"- {case} {phase}, {len(m.get('x', []))} pairs: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _goals(row: dict[str, Any]) -> list[str]:
    """The issue's goal ratios for one case, from what was measured (goal in brackets)."""
    out: list[str] = []
    create = row.get("p2preg", {}).get("create")
    solo = row.get("p2preg-solo", {}).get("create")
    if create and create["all_done_s"] is not None:
        out.append(f"create {create.get('x_one_origin_transfer')}x one origin transfer (<= 1.5)")
        if solo and solo["all_done_s"]:
            out.append(f"{create['all_done_s'] / solo['all_done_s']:.2f}x independent mirrors "
                       "(<= 0.15)")
        out.append(f"origin egress {create['origin_bytes_x_blob']}x (1.0)")
        if "max_upload_x_blob" in create:
            out.append(f"largest upload {create['max_upload_x_blob']}x the blob (<= 2)")
    update = row.get("p2preg", {}).get("update")
    if update and update.get("x_one_host_link_transfer") is not None:
        out.append(f"update {update['x_one_host_link_transfer']}x one host-link transfer "
                   "(<= 1.5)")
    for victim, kill in row.get("kill", {}).items():
        if create and kill["all_done_s"] is not None and create["all_done_s"] is not None:
            late = kill["all_done_s"] - create["all_done_s"]
            out.append(f"kill {victim}: others done {late:+.1f} s vs no kill (<= +5), "
                       f"{kill['ok_hosts']}/{kill['hosts']} ok, origin sent "
                       f"{kill['origin_bytes_x_blob']}x (<= 2)")
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Time to all hosts vs N (create phase, per cluster) and bytes uploaded per host."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    nodes = [row["nodes"] for row in rows]
    for cluster in CLUSTERS:
        ys = [row.get(cluster, {}).get("create", {}).get("x_one_origin_transfer") for row in rows]
        if any(y is not None for y in ys):
            left.plot(nodes, ys, marker="o", label=cluster)
    left.set_xlabel("hosts (N)")
    left.set_title("create phase: all hosts done (x one origin transfer)", fontsize=10)
    left.legend(fontsize=8)
    width = 0.8 / max(1, len(rows))
    for k, row in enumerate(rows):
        sent = row.get("p2preg", {}).get("create", {}).get("uploaded_bytes_per_host")
        if not sent:
            continue
        blob = row["blob_MiB"] * MIB
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(sent))]
        right.bar(xs, [s / blob for s in sent], width, label=f"N={row['nodes']}")
    right.set_xlabel("host")
    right.set_title("p2preg create phase: bytes uploaded per host (x blob)", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle(report["label"] or "fan-out on the lab", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
