"""``p2preg preheat`` and ``p2preg fanout``: the operator's side of cluster pulls.

Owns the two subcommands' arguments (``add_commands``), their run (``run``), the progress display
(a bar per node on a terminal, a plain line per change otherwise) and exit statuses: ``0`` every
chosen node holds the image, ``1`` some node failed (each named with why, on stderr), ``2`` bad
usage (a bad image name, no cluster key, unknown node names, the node refused the request).

Both talk to the node at ``--url`` (default the local node's /v2 listener) with requests signed
by ``--cluster-key-file``; that node coordinates (``coordinator``). ``fanout`` picks the start
instant (``--lead-s`` ahead, on the nodes' wall clocks: keep them in NTP sync), optionally evicts
the image on the chosen nodes first, and reports with ``report`` (the same code as
``benchmarks/fanout.py``).

Must not import the node or the server-side handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from p2preg.operate.operator import CLUSTER_PULLS_PATH
from p2preg.operate.reference import ImageRefError, parse_image
from p2preg.operate.report import MIB, format_runs, plot_timeline, summarize_cluster_pull
from p2preg.operate.signing import SignedClientError, signed_json
from p2preg.p2p.auth import RequestSigner

COMMANDS = ("preheat", "fanout")
DEFAULT_URL = "http://127.0.0.1:5000"
KEY_ENV = "P2PREG_CLUSTER_KEY_FILE"
POLL_S = 0.5
COORDINATOR_SILENT_S = 15.0
BAR = 24


class UsageError(Exception):
    """Bad usage: exit 2 with this message."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="as users write it: busybox:latest is "
                        "docker.io/library/busybox:latest; NAME@sha256:... pins a digest")
    parser.add_argument("--nodes", default="all", metavar="all|NAME,...",
                        help="the members that pull (default: every live member)")
    parser.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                        help="pull only these platforms of an index (repeatable or "
                        "comma-separated; default: all)")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the node that coordinates (default: {DEFAULT_URL})")
    parser.add_argument("--cluster-key-file", default=os.environ.get(KEY_ENV), metavar="FILE",
                        help=f"the cluster key file the nodes use (default: ${KEY_ENV})")


def add_commands(sub: Any) -> None:
    """Add ``preheat`` and ``fanout`` to the CLI's subparsers."""
    preheat = sub.add_parser(
        "preheat", help="make cluster nodes pull an image into their cache",
        description="Ask the cluster's nodes to pull IMAGE into their caches now, as a client "
        "would (peers first, the upstream once). Exit status: 0 every chosen node holds it, "
        "1 some node failed (named, with why), 2 bad usage.")
    _common(preheat)
    preheat.add_argument("--wait", action="store_true", help="follow the pulls until every "
                         "node is done (a progress bar per node on a terminal)")
    fanout = sub.add_parser(
        "fanout", help="measure a pull fan-out on the running cluster",
        description="Make the chosen nodes pull IMAGE at one instant and report the time to "
        "all nodes, p50/p99 per node, origin egress (x image) and bytes each node uploaded "
        "to peers (the report of benchmarks/fanout.py). Exit status as for preheat.")
    _common(fanout)
    fanout.add_argument("--repeat", type=int, default=1, metavar="K", help="runs (default 1)")
    fanout.add_argument("--evict-first", action="store_true",
                        help="delete the image's blobs on the chosen nodes before each run")
    fanout.add_argument("--json", type=Path, metavar="FILE", help="write the runs as JSON")
    fanout.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw the per-node timeline (needs matplotlib: the bench extra)")
    fanout.add_argument("--lead-s", type=float, default=2.0, metavar="SECONDS",
                        help="how far ahead the common start is (default 2)")


def _platforms(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _nodes(text: str) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return None if names in ([], ["all"]) else names


def load_signer(path: str | None) -> RequestSigner:
    """The signer of ``--cluster-key-file`` (the first key signs); ``UsageError`` when none is
    given or the file is unreadable or has no key."""
    from p2preg.config import ConfigError
    from p2preg.gossip.service import load_keyring

    if not path:
        raise UsageError(f"--cluster-key-file (or ${KEY_ENV}) is required: cluster pulls are "
                         "signed with the cluster key")
    try:
        keyring = load_keyring(path)
    except (ConfigError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if keyring is None:
        raise UsageError(f"no key in {path}")
    return RequestSigner(keyring)


class Progress:
    """Shows a cluster pull: bars redrawn in place on a TTY, one line per change otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._last: dict[str, str] = {}

    def show(self, pull: dict[str, Any]) -> None:
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")
            for node in pull["nodes"]:
                self.out.write("\x1b[2K" + self._bar(node) + "\n")
            self._drawn = len(pull["nodes"])
        else:
            for node in pull["nodes"]:
                line = self._line(node)
                if self._last.get(node["name"]) != line:
                    self._last[node["name"]] = line
                    self.out.write(line + "\n")
        self.out.flush()

    @staticmethod
    def _bytes(node: dict[str, Any]) -> tuple[int, int]:
        p = node.get("progress") or {}
        return int(p.get("bytes_done", 0)), int(p.get("bytes_total", 0))

    def _bar(self, node: dict[str, Any]) -> str:
        done, total = self._bytes(node)
        frac = 1.0 if node["state"] == "done" else (done / total if total else 0.0)
        filled = int(frac * BAR)
        tail = node["error"] if node["state"] == "failed" else node["state"]
        return (f"{node['name']:<16} [{'#' * filled}{'.' * (BAR - filled)}] {frac * 100:5.1f}% "
                f"{done / MIB:8.1f}/{total / MIB:.1f} MiB  {tail}")

    def _line(self, node: dict[str, Any]) -> str:
        done, total = self._bytes(node)
        if node["state"] == "failed":
            return f"{node['name']}: failed: {node['error']}"
        if node["state"] == "done":
            p = node.get("progress") or {}
            src = ", ".join(f"{k} {v / MIB:.1f} MiB"
                            for k, v in (p.get("bytes_by_source") or {}).items() if v)
            return f"{node['name']}: done in {p.get('seconds')} s ({src or 'nothing to move'})"
        return f"{node['name']}: {node['state']}" + (
            f" {done * 100 // total}%" if node["state"] == "pulling" and total else "")


class Session:
    """Signed calls to the coordinating node."""

    def __init__(self, url: str, signer: RequestSigner, http: aiohttp.ClientSession) -> None:
        self.url, self.signer, self.http = url, signer, http

    async def start(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await signed_json(
                self.http, self.signer, "POST", self.url, CLUSTER_PULLS_PATH, sender="p2preg-cli",
                body=body)
            return answer
        except SignedClientError as exc:
            if exc.status == 0:
                raise UsageError(f"{self.url} does not answer: {exc.message}") from None
            raise UsageError(f"{self.url} refused: {exc.message}") from None

    async def follow(self, pull: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        silent_since = time.monotonic()
        while True:
            if progress is not None:
                progress.show(pull)
            if pull["state"] == "finished":
                return pull
            await asyncio.sleep(POLL_S)
            try:
                pull = await signed_json(self.http, self.signer, "GET", self.url,
                                         f"{CLUSTER_PULLS_PATH}/{pull['id']}",
                                         sender="p2preg-cli")
                silent_since = time.monotonic()
            except SignedClientError as exc:
                if time.monotonic() - silent_since > COORDINATOR_SILENT_S:
                    for node in pull["nodes"]:
                        if node["state"] not in ("done", "failed"):
                            node["state"] = "failed"
                            node["error"] = f"coordinating node {self.url} lost: {exc.message}"
                    pull["state"] = "finished"
                    pull["failed"] = sorted(n["name"] for n in pull["nodes"]
                                            if n["state"] == "failed")


def _failures(pull: dict[str, Any]) -> str:
    return "; ".join(f"{n['name']} ({n['error'] or n['state']})" for n in pull["nodes"]
                     if n["state"] == "failed")


async def _preheat(args: argparse.Namespace, session: Session) -> int:
    body = {"image": args.image, "nodes": _nodes(args.nodes),
            "platforms": _platforms(args.platform), "at": None}
    pull = await session.start(body)
    print(f"preheat {pull['id']}: {pull['image']} on {len(pull['nodes'])} node(s): "
          f"{', '.join(n['name'] for n in pull['nodes'])}", flush=True)
    if args.wait:
        pull = await session.follow(pull, Progress(sys.stdout))
    if pull["failed"]:
        print(f"p2preg: preheat failed on {len(pull['failed'])} node(s): {_failures(pull)}",
              file=sys.stderr)
        return 1
    return 0


async def _fanout(args: argparse.Namespace, session: Session) -> int:
    runs: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for _ in range(max(1, args.repeat)):
        body = {"image": args.image, "nodes": _nodes(args.nodes),
                "platforms": _platforms(args.platform), "at": time.time() + args.lead_s,
                "evict_first": args.evict_first}
        pull = await session.follow(await session.start(body), None)
        raw.append(pull)
        runs.append(summarize_cluster_pull(pull))
    image = raw[0]["image"]
    print(format_runs(image, runs), end="")
    if args.json is not None:
        args.json.write_text(json.dumps({"image": image, "runs": runs, "cluster_pulls": raw},
                                        indent=2) + "\n")
    if args.plot is not None:
        try:
            plot_timeline(image, runs, args.plot)
        except ImportError:
            raise UsageError("--plot needs matplotlib (pip install 'p2preg[bench]')") from None
    failed = [p for p in raw if p["failed"]]
    if failed:
        print(f"p2preg: fanout: nodes failed: {_failures(failed[-1])}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``preheat`` or ``fanout``; the exit status."""
    try:
        parse_image(args.image)
        signer = load_signer(args.cluster_key_file)

        async def main() -> int:
            async with aiohttp.ClientSession() as http:
                session = Session(args.url, signer, http)
                if args.command == "preheat":
                    return await _preheat(args, session)
                return await _fanout(args, session)

        return asyncio.run(main())
    except (UsageError, ImageRefError) as exc:
        print(f"p2preg: {args.command}: {exc}", file=sys.stderr)
        return 2
