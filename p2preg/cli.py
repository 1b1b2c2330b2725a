"""The ``p2preg`` command: ``serve``, ``members``, ``mirror-config``, ``htpasswd``.

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
