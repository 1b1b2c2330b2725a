"""Pull fan-out: N hosts pull the same image at once through their local mirror; how often does
each blob leave the origin, and how long until every host has the image?

Owns the ``fanout`` benchmark. One CNCF Distribution 2.8 holds the image (``--layers`` layers of
``--layer-mib`` MiB plus its config). It sits behind a throttling TCP relay (``OriginLink``: one
token bucket of ``--origin-mib-s`` MiB/s for everything the origin sends, the origin's uplink or
the WAN), which also counts the bytes that left the origin. For each N in ``--nodes``, three
clusters of N mirrors on 127.0.0.1, each started cold, run in turn:

- ``p2preg``: N ``p2preg serve --mode mirror`` processes joined by gossip (``--join``, a cluster
  key): a miss goes to a peer that holds or is fetching the blob, only the digest's owner goes to
  the origin;
- ``p2preg-solo``: the same N processes without gossip (every node its own mirror), the baseline
  in the same run;
- ``distribution``: N Distribution 2.8 proxies (``proxy.remoteurl``), what a cluster would run
  otherwise.

Every host pulls as dockerd does: the manifest by tag, then the blobs 3 at a time, all N hosts
at once. Reported per cluster: the wall time until all N hosts have every blob (and the slowest
and median host), the origin's egress as a multiple of the image size, and the origin's blob
GETs (from its own log). Results are printed, written to ``docs/benchmarks/fanout.json`` and,
with ``--update-docs``, into ``docs/benchmarks-fanout.md``.

``--lab`` runs instead on the multi-host lab (root): every host a network namespace with a capped
link of its own, the origin behind its own; create, update and kill scenarios (see
``benchmarks/fanout_lab.py``, results in ``docs/benchmarks/fanout-lab*.json``).

Run from the repository root: ``.venv/bin/python -m benchmarks.fanout`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MIB,
    BenchmarkError,
    http_control,
    machine_info,
    update_docs_section,
    write_results,
)
from benchmarks.fanout_lab import PHASES as LAB_PHASES
from benchmarks.fanout_lab import ab_markdown as lab_ab_markdown
from benchmarks.fanout_lab import markdown as lab_markdown
from benchmarks.fanout_lab import plot as lab_plot
from benchmarks.fanout_lab import run_lab
from benchmarks.lab import CLUSTERS as LAB_CLUSTERS
from benchmarks.lab import LabUnavailable, check_available
from benchmarks.mirror import OCI_MANIFEST, curl_get, seed_image
from p2preg.operate.report import time_stats
from tests.support.daemons import Distribution, distribution
from tests.support.node import P2pregNode

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO_ROOT / "docs" / "benchmarks" / "fanout.json"
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks-fanout.md"
PLOT_PATH = REPO_ROOT / "docs" / "benchmarks" / "fanout.png"
CLUSTERS = ("p2preg", "p2preg-solo", "distribution")
REPO = "library/fanout"
RELAY_CHUNK = 64 * 1024
MEMBERSHIP_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------ the origin's link


class OriginLink:
    """A TCP relay in front of the origin: bytes *from* the origin share one token bucket.

    Runs its own event loop in a thread; ``url`` is what the mirrors use as their upstream.
    ``egress_bytes`` counts what the origin sent through it.
    """

    def __init__(self, origin_host: str, rate_bytes_s: float) -> None:
        host, port = origin_host.rsplit(":", 1)
        self._origin = (host, int(port))
        self._rate = rate_bytes_s
        self._tokens = 0.0
        self._stamp = 0.0
        self.egress_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="origin-link", daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def __enter__(self) -> OriginLink:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchmarkError("origin link did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0)
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._stamp = self._loop.time()
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.close()

    async def _take(self, nbytes: int) -> None:
        """Wait until the shared bucket allows ``nbytes`` more (at most 50 ms of burst)."""
        while True:
            now = self._loop.time()
            self._tokens = min(self._rate * 0.05, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= nbytes:
                self._tokens -= nbytes
                return
            await asyncio.sleep((nbytes - self._tokens) / self._rate)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            origin_r, origin_w = await asyncio.open_connection(*self._origin)
        except OSError:
            client_w.close()
            return

        async def upstream() -> None:  # requests: not throttled
            with contextlib.suppress(OSError):
                while data := await client_r.read(RELAY_CHUNK):
                    origin_w.write(data)
                    await origin_w.drain()
            with contextlib.suppress(OSError):
                origin_w.write_eof()

        async def downstream() -> None:  # the origin's egress: throttled and counted
            with contextlib.suppress(OSError):
                while data := await origin_r.read(RELAY_CHUNK):
                    await self._take(len(data))
                    self.egress_bytes += len(data)
                    client_w.write(data)
                    await client_w.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            for writer in (client_w, origin_w):
                with contextlib.suppress(OSError):
                    writer.close()


# ------------------------------------------------------------------------------------- clusters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def members_alive(url: str) -> int:
    """How many members the node at ``url`` sees alive (``GET /p2p/v1/members``)."""
    try:
        with urllib.request.urlopen(f"{url}/p2p/v1/members", timeout=10) as response:
            members = json.loads(response.read())["members"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for m in members if m.get("status") == "alive")


@contextlib.contextmanager
def p2preg_cluster(count: int, upstream: str, *, gossip: bool) -> Iterator[list[str]]:
    """``count`` cold p2preg mirrors (joined by gossip, or each on its own); yields base URLs."""
    with tempfile.TemporaryDirectory(prefix="p2p-bm-fan-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        key_file = base / "cluster.key"
        key_file.write_text(os.urandom(32).hex() + "\n")
        first_gossip = ""
        nodes: list[P2pregNode] = []
        for i in range(count):
            args = ["--upstream", f"docker.io={upstream}"]
            if gossip:
                addr = f"127.0.0.1:{free_port()}"
                args += ["--gossip-listen", addr, "--node-name", f"n{i}",
                         "--cluster-key-file", str(key_file)]  # fmt: skip
                if first_gossip:
                    args += ["--join", first_gossip]
                first_gossip = first_gossip or addr
            node = P2pregNode(base / f"n{i}", mode="mirror", extra_args=args)
            node.start()
            stack.callback(node.stop)
            nodes.append(node)
        urls = [n.url for n in nodes]
        if gossip:
            deadline = time.monotonic() + MEMBERSHIP_TIMEOUT_S
            while not all(members_alive(u) == count for u in urls):
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{count} nodes did not all see each other in time")
                time.sleep(0.1)
        yield urls


@contextlib.contextmanager
def distribution_cluster(count: int, upstream: str) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(distribution(proxy_remote_url=upstream)).url
               for _ in range(count)]  # fmt: skip


def cluster(name: str, count: int, upstream: str) -> contextlib.AbstractContextManager[list[str]]:
    if name == "distribution":
        return distribution_cluster(count, upstream)
    return p2preg_cluster(count, upstream, gossip=name == "p2preg")


# ------------------------------------------------------------------------------------ the pull


def pull_image(url: str, blobs: Sequence[tuple[str, int]]) -> float:
    """Pull as dockerd does (manifest by tag, blobs 3 at a time); returns the seconds taken."""
    start = time.perf_counter()
    status, _ = http_control("GET", f"{url}/v2/{REPO}/manifests/latest", {"Accept": OCI_MANIFEST})
    if status != 200:
        raise BenchmarkError(f"{url}: manifest GET gave {status}")
    with ThreadPoolExecutor(max_workers=3) as pool:
        gets = list(pool.map(lambda b: curl_get(f"{url}/v2/{REPO}/blobs/{b[0]}"), blobs))
    for got, (digest, size) in zip(gets, blobs, strict=True):
        if got.status != 200 or got.nbytes != size:
            raise BenchmarkError(f"{url}: blob {digest} gave {got.status}, {got.nbytes} bytes")
    return time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class FanOut:
    wall_s: float
    host_s: list[float]
    egress_bytes: int
    origin_blob_gets: int


def fan_out(
    name: str, count: int, origin: Distribution, link: OriginLink,
    blobs: Sequence[tuple[str, int]],
) -> FanOut:  # fmt: skip
    with cluster(name, count, link.url) as urls:
        gets_before = sum(origin.blob_gets(d) for d, _ in blobs)
        egress_before = link.egress_bytes
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            host_s = list(pool.map(lambda u: pull_image(u, blobs), urls))
        wall = time.perf_counter() - start
        egress = link.egress_bytes - egress_before
    gets = sum(origin.blob_gets(d) for d, _ in blobs) - gets_before
    return FanOut(round(wall, 3), [round(s, 3) for s in host_s], egress, gets)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="p2p-bm-fan-") as tmp, distribution() as origin:
        blobs = seed_image(origin, REPO, Path(tmp), [args.layer_mib * MIB] * args.layers)
        image_bytes = sum(size for _, size in blobs)
        with OriginLink(origin.host, args.origin_mib_s * MIB) as link:
            for count in args.nodes:
                row: dict[str, Any] = {"nodes": count}
                for name in CLUSTERS:
                    got = fan_out(name, count, origin, link, blobs)
                    stats = time_stats(dict(enumerate(got.host_s)))  # as `p2preg fanout`
                    row[name] = {
                        "wall_s": got.wall_s,
                        "slowest_host_s": stats["host_max_s"],
                        "median_host_s": stats["host_p50_s"],
                        "origin_egress_x_image": round(got.egress_bytes / image_bytes, 2),
                        "origin_blob_gets": got.origin_blob_gets,
                    }
                    print(f"N={count} {name}: {row[name]}", flush=True)
                for base in ("p2preg-solo", "distribution"):
                    row[f"wall_ratio_vs_{base}"] = round(
                        row["p2preg"]["wall_s"] / row[base]["wall_s"], 3
                    )
                results.append(row)
    return {
        "benchmark": "fanout",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.fanout " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "image": {
            "layers": args.layers,
            "layer_MiB": args.layer_mib,
            "blobs": len(blobs),
            "bytes": image_bytes,
        },
        "origin_MiB_per_s": args.origin_mib_s,
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    image, machine = report["image"], report["machine"]
    lines = [
        "## Pull fan-out: N hosts pull one image at once (`benchmarks/fanout.py`)",
        "",
        f"Measured {report['when']} on {machine['cpus']} CPUs (load at start "
        f"{machine['loadavg_at_start']}), command: `{report['command']}`. Image: "
        f"{image['layers']} x {image['layer_MiB']} MiB layers + config "
        f"({image['bytes'] / MIB:.0f} MiB); origin egress capped at "
        f"{report['origin_MiB_per_s']} MiB/s; every cluster starts cold.",
        "",
        "| hosts | cluster | all hosts done | slowest host | origin egress (x image) "
        "| origin blob GETs |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        for name in CLUSTERS:
            r = row[name]
            lines.append(
                f"| {row['nodes']} | {name} | {r['wall_s']} s | {r['slowest_host_s']} s "
                f"| {r['origin_egress_x_image']} | {r['origin_blob_gets']} |"
            )
    lines += ["", "Time for all hosts, p2preg / baseline (lower is better):", ""]
    for row in report["results"]:
        lines.append(
            f"- N={row['nodes']}: {row['wall_ratio_vs_p2preg-solo']} x independent p2preg "
            f"mirrors, {row['wall_ratio_vs_distribution']} x Distribution proxies"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Time for all hosts and origin egress per cluster, against N (a PNG beside the docs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    nodes = [row["nodes"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(CLUSTERS)
    for i, name in enumerate(CLUSTERS):
        xs = [x + (i - 1) * width for x in range(len(nodes))]
        left.bar(xs, [row[name]["wall_s"] for row in rows], width, label=name)
        right.bar(xs, [row[name]["origin_egress_x_image"] for row in rows], width, label=name)
    for axis, title in ((left, "time until every host has the image (s)"),
                        (right, "origin egress (x image size)")):  # fmt: skip
        axis.set_xticks(range(len(nodes)), [f"N={n}" for n in nodes])
        axis.set_title(title, fontsize=10)
    left.legend(fontsize=8)
    fig.suptitle(f"Pull fan-out, origin capped at {report['origin_MiB_per_s']} MiB/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8],
                        help="cluster sizes (4 8)")  # fmt: skip
    parser.add_argument("--layers", type=int, default=4, help="image layers (4)")
    parser.add_argument("--layer-mib", type=int, default=64, help="size of each layer (64)")
    parser.add_argument("--origin-mib-s", type=float, default=100.0,
                        help="the origin's egress cap in MiB/s (100)")  # fmt: skip
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"write the results into {DOCS_PATH.relative_to(REPO_ROOT)}",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH,
                        help="where the JSON goes (docs/benchmarks/fanout.json)")  # fmt: skip
    lab = parser.add_argument_group(
        "lab mode", "hosts as network namespaces with capped links (needs root; "
        "benchmarks/fanout_lab.py)")
    lab.add_argument("--lab", action="store_true", help="run on the multi-host lab")
    lab.add_argument("--lab-case", action="append", metavar="N:HOST_MBIT:ORIGIN_MBIT:BLOB_MIB",
                     help="a lab setting (repeatable; default: the issue's for each --nodes)")
    lab.add_argument("--clusters", nargs="+", default=list(LAB_CLUSTERS), choices=LAB_CLUSTERS)
    lab.add_argument("--no-kill", action="store_true", help="skip the kill scenarios")
    lab.add_argument("--phases", nargs="+", default=list(LAB_PHASES), choices=LAB_PHASES,
                     help="the scenarios to run (all: create update kill)")
    lab.add_argument("--node-src", type=Path, metavar="DIR",
                     help="run the p2preg nodes from this source tree (an A/B against another "
                     "commit: git archive COMMIT | tar -x -C DIR); default this one")
    lab.add_argument("--seed", type=int, default=900, help="seed of the blobs' bytes")
    lab.add_argument("--ab", type=Path, metavar="DIR",
                     help="A/B: alternate runs of the nodes from DIR (the base, e.g. main: "
                     "git archive main | tar -x -C DIR) and from this tree, --repeat pairs")
    lab.add_argument("--ab-label", default="", help="what the --ab tree is (e.g. main at abc123)")
    lab.add_argument("--repeat", type=int, default=3, help="A/B pairs per case (3)")
    lab.add_argument("--label", default="", help="title of this run in the docs")
    lab.add_argument("--section", default="fanout-lab",
                     help="the marked docs section the table replaces (fanout-lab)")
    lab.add_argument("--render", type=Path, metavar="JSON",
                     help="only rewrite the docs section and plot from an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.lab:
        return main_lab(args)
    report = run(args)
    print(json.dumps(report["results"], indent=2))
    print(markdown(report))
    if not args.no_write:
        write_results(args.results, report)
    if args.update_docs:
        plot(report, PLOT_PATH)
        update_docs_section(DOCS_PATH, "fanout", markdown(report)
                            + f"\n![fan-out]({PLOT_PATH.relative_to(DOCS_PATH.parent)})\n")
    return 0


def main_lab(args: argparse.Namespace) -> int:
    """``--lab``: run the lab scenarios; JSON, a table and plots (``benchmarks/fanout_lab.py``)."""
    try:
        if args.render is None:
            check_available()
    except LabUnavailable as exc:
        print(f"the lab cannot run here: {exc}", file=sys.stderr)
        return 2
    if args.render is not None:
        report = json.loads(args.render.read_text())
        args.no_write, args.update_docs = True, True
    else:
        report = run_lab(args)
        print(json.dumps(report["results"], indent=2))
    table = lab_ab_markdown(report) if report.get("ab_base") else lab_markdown(report)
    print(table)
    stem = args.section
    if not args.no_write:
        write_results(REPO_ROOT / "docs" / "benchmarks" / f"{stem}.json", report)
    if args.update_docs:
        plot_path = REPO_ROOT / "docs" / "benchmarks" / f"{stem}.png"
        with contextlib.suppress(ImportError):
            if not report.get("ab_base"):  # an A/B's table is its result: no plot
                lab_plot(report, plot_path)
                table += f"\n![{stem}]({plot_path.relative_to(DOCS_PATH.parent)})\n"
        update_docs_section(DOCS_PATH, stem, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
