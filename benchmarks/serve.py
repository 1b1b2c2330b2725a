"""Benchmark a p2preg node as a plain registry against CNCF Distribution 2.8, in one run.

Owns the ``serve`` benchmark: both registries run on this machine at the same time (Debian's
``docker-registry`` and ``p2preg serve --mode registry``, each on 127.0.0.1 with its own data dir
on the same file system) and get the same requests, interleaved run by run:

- push, monolithic: POST an upload, PUT ``?digest=`` with the whole blob;
- push, chunked: POST, one PATCH per chunk (``Content-Range``), PUT ``?digest=``;
- hot blob GET (the blob is on disk and in the page cache), 1 and 8 concurrent clients.

The load client is curl (one process per concurrent client, body to /dev/null), the same for both.
The first GET of each registry is hashed to check it serves the exact bytes. Results: medians of
the runs in MiB/s and the ratio p2preg / Distribution (above 1: p2preg is faster), printed, written
to ``docs/benchmarks/serve.json`` and, with ``--update-docs``, to the ``serve`` section of
``docs/benchmarks.md``.

Run from the repository root: ``.venv/bin/python -m benchmarks.serve`` (``--help`` for sizes).

Must not import p2preg: the node runs as a separate process, started as a user starts it.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MIB,
    BenchmarkError,
    Series,
    curl_get_parallel,
    machine_info,
    push_chunked,
    push_monolithic,
    split_file,
    update_docs_section,
    write_blob_file,
    write_results,
)
from tests.support.daemons import distribution, run_command
from tests.support.node import running_node

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO_ROOT / "docs" / "benchmarks" / "serve.json"
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
TARGETS = ("p2preg", "distribution")
MEASURES = {
    "push_monolithic": "push, monolithic (1 client)",
    "push_chunked": "push, chunked (1 client)",
    "get_1": "hot blob GET, 1 client",
    "get_8": "hot blob GET, 8 clients (aggregate)",
}
GOALS = {"push_monolithic": 0.8, "push_chunked": 0.8, "get_1": 1.0, "get_8": 1.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description="p2preg registry vs Distribution 2.8: hot GET and push throughput.",
    )
    parser.add_argument("--blob-mib", type=int, default=1024, help="blob size (default 1024)")
    parser.add_argument("--chunk-mib", type=int, default=64, help="PATCH size (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent GET clients (default: 1 8)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no new run after this many seconds (default 300)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="JSON output file")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the serve section of docs/benchmarks.md")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the blob's bytes")
    return parser.parse_args(argv)


def verify_blob(url: str, digest: str, size: int) -> None:
    """GET the blob once (this also warms the page cache) and check length and digest."""
    hasher = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=600) as response:
        while piece := response.read(4 * MIB):
            hasher.update(piece)
            received += len(piece)
    if received != size or "sha256:" + hasher.hexdigest() != digest:
        raise BenchmarkError(f"{url} served {received} bytes that do not match {digest}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    machine = machine_info()  # before the load: the load average says how busy the machine was
    size = args.blob_mib * MIB
    series: dict[str, dict[str, Series]] = {t: {m: Series() for m in MEASURES} for t in TARGETS}
    with tempfile.TemporaryDirectory(prefix="p2p-bench-serve-", dir="/tmp") as tmp:
        work = Path(tmp)
        print(f"writing a {args.blob_mib} MiB blob ...", file=sys.stderr)
        blob = work / "blob"
        digest = write_blob_file(blob, size, args.seed)
        chunks = split_file(blob, args.chunk_mib * MIB, work / "chunks")
        with (
            distribution(root=work / "distribution") as dist,
            running_node(work / "p2preg" / "data") as node,
        ):
            urls = {"p2preg": node.url, "distribution": dist.url}
            repeats_done = 0
            for repeat in range(args.repeats):
                if repeat and time.monotonic() - started > args.budget_s:
                    break
                order = TARGETS if repeat % 2 == 0 else TARGETS[::-1]
                for target in order:
                    base = urls[target]
                    mono = push_monolithic(base, f"bench/mono-{repeat}", blob, digest)
                    series[target]["push_monolithic"].samples.append(mono)
                    chunked = push_chunked(base, f"bench/chunked-{repeat}", chunks, digest)
                    series[target]["push_chunked"].samples.append(chunked)
                    print(f"{target}: push {mono.mb_per_s:.0f} / chunked "
                          f"{chunked.mb_per_s:.0f} MiB/s", file=sys.stderr)  # fmt: skip
                repeats_done += 1
            for target in TARGETS:
                verify_blob(f"{urls[target]}/v2/bench/mono-0/blobs/{digest}", digest, size)
            get_repeats = 0
            for repeat in range(args.repeats):
                if repeat and time.monotonic() - started > args.budget_s:
                    break
                order = TARGETS if repeat % 2 == 0 else TARGETS[::-1]
                for clients in args.clients:
                    for target in order:
                        url = f"{urls[target]}/v2/bench/mono-0/blobs/{digest}"
                        sample = curl_get_parallel(url, clients, size)
                        series[target].setdefault(f"get_{clients}", Series()).samples.append(sample)
                        print(f"{target}: GET x{clients} {sample.mb_per_s:.0f} MiB/s",
                              file=sys.stderr)  # fmt: skip
                get_repeats += 1
    return {
        "benchmark": "serve",
        "command": " ".join(
            [".venv/bin/python -m benchmarks.serve", *map(shlex.quote, sys.argv[1:])]
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "distribution_version": run_command(["docker-registry", "--version"]).stdout.strip(),
        "load_client": "curl processes, one per concurrent client, body to /dev/null",
        "blob_bytes": size,
        "chunk_bytes": args.chunk_mib * MIB,
        "repeats": {"push": repeats_done, "get": get_repeats},
        "duration_s": round(time.monotonic() - started, 1),
        "results": {
            measure: {
                **{t: series[t][measure].as_json() for t in TARGETS if measure in series[t]},
                "ratio_p2preg_over_distribution": ratio(series, measure),
            }
            for measure in _measures(series)
        },
    }


def _measures(series: dict[str, dict[str, Series]]) -> list[str]:
    return [m for m in series["p2preg"] if series["p2preg"][m].samples]


def ratio(series: dict[str, dict[str, Series]], measure: str) -> float | None:
    reference = series["distribution"][measure].median_mb_per_s
    if reference <= 0:
        return None
    return round(series["p2preg"][measure].median_mb_per_s / reference, 3)


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        "## serve: p2preg as a registry vs Distribution 2.8",
        "",
        f"Command (from the repository root): `{results['command']}`",
        "",
        f"Measured {results['date']} on {results['machine']['cpus']} CPUs "
        f"({results['machine']['platform']}, load average at start "
        f"{results['machine']['loadavg_at_start'][0]}), blob "
        f"{results['blob_bytes'] // MIB} MiB, chunks {results['chunk_bytes'] // MIB} MiB, "
        f"{results['repeats']['push']} push runs and {results['repeats']['get']} GET runs "
        f"per registry (medians), {results['distribution_version']}. "
        f"Load client: {results['load_client']}. Raw figures: `docs/benchmarks/serve.json`.",
        "",
        "Both registries run at once on 127.0.0.1, each with its own data dir on the same file "
        "system, and get the same requests, interleaved run by run (their order alternates). "
        "Pushes send the blob with POST then PUT `?digest=` (monolithic) or PATCH chunks with "
        "`Content-Range` then PUT (chunked); hot GETs fetch the pushed blob (on disk and in the "
        "page cache) with N concurrent clients, throughput = N x size / wall time. The ratio is "
        "p2preg / Distribution (above 1: p2preg is faster). The machine is shared with other "
        "jobs, so single runs vary by tens of percent; compare the medians.",
        "",
        "| measurement | p2preg MiB/s | Distribution MiB/s | ratio | goal |",
        "|---|---:|---:|---:|---:|",
    ]
    for measure, row in results["results"].items():
        label = MEASURES.get(measure, measure.replace("_", " "))
        goal = GOALS.get(measure)
        value = row["ratio_p2preg_over_distribution"]
        lines.append(
            f"| {label} | {row['p2preg']['median_MiB_per_s']} | "
            f"{row['distribution']['median_MiB_per_s']} | "
            f"{'n/a' if value is None else f'{value:.2f}x'} | "
            f"{'' if goal is None else f'>= {goal}x'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    write_results(args.results, results)
    table = markdown_table(results)
    print(table)
    if args.update_docs:
        update_docs_section(DOCS_PATH, "serve", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
