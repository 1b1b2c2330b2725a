"""``p2preg fanout`` against the lab harness: do the field tool and the lab benchmark report the
same time to all hosts?

Owns this comparison. On one multi-host lab (``benchmarks/lab.py``: N network-namespace hosts
with capped links, a Distribution origin behind its own cap, one p2preg node per host, gossip and
a cluster key) it alternates, ``--repeat`` times, two cold fan-outs of same-sized images (one
layer of ``--blob-mib`` MiB, a fresh seed each time so nothing is cached):

- **harness**: every host pulls the image through its own node at one instant, the way
  ``benchmarks/fanout.py --lab`` measures (``Lab.pull_image``: a thread per host inside its
  namespace, released by a barrier, timed to the last byte);
- **cli**: ``p2preg fanout library/fieldN:latest`` run inside host 0's namespace against host 0's
  node (the nodes pull at the instant it chose, and time themselves).

Both reports come from ``p2preg.operate.report.time_stats``. Printed, and written to
``docs/benchmarks/fanout-field.json``: per pair the two times to all and their ratio, and the
median ratio (the goal: within 10%).

Needs root (the lab). Run: ``.venv/bin/python -m benchmarks.fanout_field``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import MIB, machine_info, write_results
from benchmarks.lab import REPO_ROOT, Lab, check_available, url_of
from p2preg.operate.report import time_stats

RESULTS_PATH = REPO_ROOT / "docs" / "benchmarks" / "fanout-field.json"


def harness_run(lab: Lab, repo: str) -> dict[str, Any]:
    results = lab.pull_image(range(lab.n_hosts), repo, "latest")
    t0 = min(r.started for r in results)
    failed = [r.host for r in results if not r.digest_ok]
    if failed:
        raise RuntimeError(f"harness pull failed on hosts {failed}")
    return time_stats({r.host: r.finished - t0 for r in results})


def cli_run(lab: Lab, repo: str, key_file: Path, out: Path) -> dict[str, Any]:
    host = lab.hosts[0]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "p2preg", "fanout",
            f"{repo}:latest", "--url", url_of(host), "--cluster-key-file", str(key_file),
            "--json", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"p2preg fanout: {done.returncode}: {done.stderr}")
    run: dict[str, Any] = json.loads(out.read_text())["runs"][0]
    return {k: run[k] for k in ("all_done_s", "host_p50_s", "host_p99_s", "host_max_s",
                                "origin_egress_x_image")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--host-mbit", type=float, default=128.0)
    parser.add_argument("--origin-mbit", type=float, default=64.0)
    parser.add_argument("--blob-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    check_available()
    pairs = []
    with Lab(args.nodes, host_mbit=args.host_mbit, origin_mbit=args.origin_mbit) as lab, \
            tempfile.TemporaryDirectory(prefix="p2p-field-") as tmp:
        lab.start_nodes("p2preg")
        key_file = max(lab.workdir.glob("run-*/cluster.key"), key=lambda p: p.stat().st_mtime)
        for i in range(args.repeat):
            repos = {}
            for kind, seed in (("harness", 2 * i), ("cli", 2 * i + 1)):
                repo = f"library/field{kind}{i}"
                digest = lab.push_blob(args.blob_mib * MIB, 7000 + seed, repo)
                lab.push_image(repo, "latest", [(digest, args.blob_mib * MIB)])
                repos[kind] = repo
            harness = harness_run(lab, repos["harness"])
            cli = cli_run(lab, repos["cli"], key_file, Path(tmp) / f"run{i}.json")
            ratio = round(cli["all_done_s"] / harness["all_done_s"], 3)
            pairs.append({"harness": harness, "cli": cli, "cli_over_harness": ratio})
            print(f"pair {i}: harness {harness['all_done_s']} s, p2preg fanout "
                  f"{cli['all_done_s']} s, ratio {ratio}", flush=True)
    median = statistics.median(p["cli_over_harness"] for p in pairs)
    report = {
        "benchmark": "fanout-field",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.fanout_field " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "case": {"nodes": args.nodes, "host_mbit": args.host_mbit,
                 "origin_mbit": args.origin_mbit, "blob_mib": args.blob_mib},
        "pairs": pairs,
        "median_cli_over_harness": median,
        "within_10_percent": abs(median - 1.0) <= 0.10,
    }
    print(json.dumps({k: report[k] for k in ("median_cli_over_harness", "within_10_percent")}))
    if not args.no_write:
        write_results(RESULTS_PATH, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
