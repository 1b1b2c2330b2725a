"""The ``p2preg`` command: ``serve``, ``members``, ``mirror-config``, ``htpasswd``, ``gc``,
``cluster-key``.

Owns: argument parsing and process-level concerns (logging set-up, uvloop, signals, exit codes).
Everything else is delegated: ``node.Node`` runs a node; subcommands import their module lazily so
``p2preg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from collections.abc import Sequence

from p2preg import __version__
from p2preg.config import ConfigError, add_arguments, load_config

log = logging.getLogger("p2preg")

DESCRIPTION = """\
p2preg: a peer-to-peer OCI/Docker registry node.

One node runs on every host. It serves the OCI Distribution API (the host's registry mirror on
localhost, or a plain registry you push to), keeps blobs in a content-addressable store, and
fetches what it lacks from the nearest peer that has it before asking the upstream registry.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2preg", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"p2preg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run a node (registry or mirror)",
        description="Run a node. Options come from --config (TOML), P2PREG_* environment "
        "variables and flags; flags win. SIGTERM or SIGINT shuts down gracefully.",
    )
    add_arguments(serve)

    members = sub.add_parser("members", help="show the cluster as a node sees it",
                             description="Print the gossip members a node knows, as a table.")
    members.add_argument("--node", default="http://127.0.0.1:5000",
                         help="URL of the node to ask (default: http://127.0.0.1:5000)")
    members.add_argument("--json", action="store_true", help="print the raw JSON")

    mc = sub.add_parser(
        "mirror-config",
        help="print or write the client configuration that points at this node",
        description="Print (or write, keeping a backup) the docker daemon.json registry-mirrors, "
        "the containerd certs.d hosts.toml files, or the podman registries.conf for this node.",
    )
    mc.add_argument("client", choices=("docker", "containerd", "podman"))
    mc.add_argument("--write", action="store_true", help="write the file(s) in place (backup kept)")
    mc.add_argument("--mirror", default=None, metavar="HOST:PORT",
                    help="address of the node (default: --listen)")
    mc.add_argument("--target", default=None, metavar="PATH",
                    help="file or directory to write instead of the client's default location")
    add_arguments(mc)

    hp = sub.add_parser("htpasswd", help="print a bcrypt htpasswd line for --htpasswd",
                        description="Print USER:BCRYPT for an htpasswd file. The password is read "
                        "from stdin when it is not a terminal, else prompted for.")
    hp.add_argument("user")

    sub.add_parser("cluster-key", help="print a new random cluster key (one line)",
                   description="Print a new cluster key: 32 random bytes as 64 hex digits, one "
                   "line, for a --cluster-key-file (one key per line, the first signs).")

    gc = sub.add_parser(
        "gc",
        help="delete unreferenced blobs from a stopped node's data directory",
        description="Garbage-collect a registry's data directory while no node runs on it (the "
        "data-dir lock is taken; a running node is refused: it collects by itself every "
        "--gc-interval-s). Deletes blobs no manifest references and no live repository link "
        "uses, and dead links. The data directory comes from --data-dir, else --config / "
        "P2PREG_DATA_DIR as for serve. Exit status: 0 done, 1 could not run, 2 bad usage.",
    )
    gc.add_argument("--config", metavar="FILE", help="TOML file of the node (for data_dir and "
                    "gc_grace_s)")
    gc.add_argument("--data-dir", dest="data_dir", metavar="DIR", default=None,
                    help="the data directory (default: as `p2preg serve` resolves it)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted; change "
                    "nothing")
    gc.add_argument("--grace-s", dest="grace_s", type=float, default=None, metavar="SECONDS",
                    help="keep blobs committed, linked or read less than SECONDS ago (default: "
                    "gc_grace_s, 3600; 0 is safe offline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "members":
            return _members(args)
        if args.command == "mirror-config":
            return _mirror_config(args)
        if args.command == "htpasswd":
            return _htpasswd(args)
        if args.command == "gc":
            return _gc(args)
        if args.command == "cluster-key":
            return _cluster_key()
    except ConfigError as exc:
        print(f"p2preg: configuration error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _serve(args: argparse.Namespace) -> int:
    from p2preg.logs import setup_logging
    from p2preg.node import Node

    config = load_config(args)
    setup_logging(config.log_level)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()

    async def run() -> int:
        node = Node(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await node.start()
        except ConfigError:
            await node.stop()
            raise
        except OSError as exc:
            log.error("cannot start: %s", exc)
            await node.stop()
            return 1
        await stop.wait()
        await node.stop()
        return 0

    with runner:
        return runner.run(run())


def _members(args: argparse.Namespace) -> int:
    import json

    from p2preg.gossip.http import MembersFetchError, fetch_members, format_members_table

    try:
        data = asyncio.run(fetch_members(args.node))
    except MembersFetchError as exc:
        print(f"p2preg: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_members_table(data), end="")
    return 0


def _mirror_config(args: argparse.Namespace) -> int:
    from p2preg.mirrorconfig import run_mirror_config

    config = load_config(args)
    return run_mirror_config(config, args.client, write=args.write, mirror=args.mirror,
                             target=args.target)


def _htpasswd(args: argparse.Namespace) -> int:
    from p2preg.registry.htpasswd import HtpasswdError, make_htpasswd_line

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("p2preg: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("p2preg: empty password", file=sys.stderr)
        return 1
    try:
        print(make_htpasswd_line(args.user, password))
    except HtpasswdError as exc:
        print(f"p2preg htpasswd: {exc}", file=sys.stderr)
        return 2
    return 0


def _cluster_key() -> int:
    import secrets

    from p2preg.gossip.wire import GENERATED_KEY_BYTES

    print(secrets.token_hex(GENERATED_KEY_BYTES))
    return 0


def _gc(args: argparse.Namespace) -> int:
    import math
    import time
    from pathlib import Path

    from p2preg.storage.gc import NotADataDir, collect_offline
    from p2preg.storage.layout import StoreLayout
    from p2preg.storage.lock import DataDirLocked

    config = load_config(args)
    grace_s = config.gc_grace_s if args.grace_s is None else args.grace_s
    if not 0 <= grace_s < math.inf:
        print(f"p2preg gc: --grace-s must be a number >= 0, got {args.grace_s}", file=sys.stderr)
        return 2
    verb = "would delete" if args.dry_run else "deleted"

    def show(digest: str, size: int) -> None:
        print(f"{verb} {digest} {size} bytes", flush=True)

    layout = StoreLayout(Path(config.data_dir))
    try:
        report = asyncio.run(collect_offline(
            layout, now=time.time(), grace_s=grace_s, dry_run=args.dry_run, on_delete=show,
        ))
    except DataDirLocked as exc:
        print(f"p2preg gc: {exc}. A running node collects garbage itself (--gc-interval-s); "
              "stop it to run gc by hand.", file=sys.stderr)
        return 1
    except (NotADataDir, OSError, RuntimeError) as exc:  # RuntimeError: SQLite schema too new
        print(f"p2preg gc: {exc}", file=sys.stderr)
        return 1
    links = "dead link" if report.links_removed == 1 else "dead links"
    print(f"{'dry run: ' if args.dry_run else ''}{verb} {report.deleted} of {report.examined} "
          f"blobs, {report.freed_bytes} bytes ({_human_bytes(report.freed_bytes)}), and "
          f"{report.links_removed} {links}; grace {grace_s:g} s")
    if report.failed:
        print(f"p2preg gc: {report.failed} blobs could not be deleted (see above)", file=sys.stderr)
        return 1
    return 0


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
