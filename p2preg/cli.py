"""The ``p2preg`` command: ``serve``, ``members``, ``mirror-config``, ``htpasswd``, ``gc``,
``cluster-key``.

Owns: argument parsing and process-level concerns (logging set-up, uvloop, signals, exit codes)
and the start-up error style: every operator mistake (``as_config_error``: bad values, TOML,
htpasswd, TLS, key files, a data dir in use) is one line ``p2preg: configuration error: OPTION
(SOURCE): WHAT — FIX`` with exit status 2, secrets scrubbed, start-up log lines held back so the
error is the only line. Everything else is delegated: ``node.Node`` runs a node; subcommands
import their module lazily so ``p2preg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence

from p2preg import __version__
from p2preg.config import (
    MIRROR_CONFIG_OPTIONS,
    ConfigError,
    Sources,
    add_arguments,
    load_config,
    load_config_with_sources,
    scrub,
)

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

    from p2preg.operate.client import KEY_ENV, add_commands

    members = sub.add_parser("members", help="show the cluster as a node sees it",
                             description="Print the gossip members a node knows, as a table.")
    members.add_argument("--node", default="http://127.0.0.1:5000",
                         help="URL of the node to ask (default: http://127.0.0.1:5000)")
    members.add_argument("--json", action="store_true", help="print the raw JSON")
    members.add_argument("--ca", metavar="FILE", default=None,
                         help="CA bundle (PEM) to verify an https:// node with (default: the "
                         "system store)")
    members.add_argument("--cluster-key-file", default=os.environ.get(KEY_ENV), metavar="FILE",
                         help="sign the request with this cluster key file, for a node whose "
                         "members list is only on its signed --peer-listen (default: "
                         f"${KEY_ENV})")

    mc = sub.add_parser(
        "mirror-config",
        help="print or write the client configuration that points at this node",
        description="Print (or write) the docker daemon.json registry-mirrors (merged, backup "
        "kept), the containerd certs.d/<registry>/hosts.toml files, or a podman/CRI-O drop-in "
        "registries.conf.d/50-p2preg.conf for this node. The node's address and upstreams come "
        "from the same --config/P2PREG_*/flags as `p2preg serve`.",
    )
    mc.add_argument("client", choices=("docker", "containerd", "podman"))
    mc.add_argument("--write", action="store_true", help="write the file(s) in place (docker: "
                    "merged, backup kept; an unchanged file is left alone)")
    mc.add_argument("--mirror", default=None, metavar="HOST:PORT",
                    help="address of the node (default: --listen)")
    mc.add_argument("--target", default=None, metavar="PATH",
                    help="file or directory to write instead of the client's default location "
                    "(docker: /etc/docker/daemon.json, containerd: /etc/containerd/certs.d, "
                    "podman: /etc/containers/registries.conf.d)")
    add_arguments(mc, only=MIRROR_CONFIG_OPTIONS)

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
    add_commands(sub)  # preheat, fanout (p2preg/operate/client.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sources = Sources()
    try:
        if args.command == "serve":
            return _serve(args, sources)
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
        if args.command in ("preheat", "fanout"):
            from p2preg.operate.client import run

            return run(args)
    except Exception as exc:
        error = as_config_error(exc)
        if error is None:
            raise
        print(f"p2preg: configuration error: {error.line(sources)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def as_config_error(exc: BaseException) -> ConfigError | None:
    """The operator's mistakes found at start-up, as one ``ConfigError`` each (option, what,
    fix); ``None`` for anything else (a bug: its traceback is wanted)."""
    from p2preg.gossip.wire import KeyringError
    from p2preg.registry.htpasswd import HtpasswdError
    from p2preg.storage.lock import DataDirLocked
    from p2preg.tlsconfig import TLSConfigError
    from p2preg.upstream.config import UpstreamConfigError

    if isinstance(exc, ConfigError) and isinstance(exc.__cause__, UpstreamConfigError):
        exc = exc.__cause__  # node.start wraps it; the original knows its source
    if isinstance(exc, ConfigError):
        if exc.fix is None and exc.option in _FIXES:
            exc.fix = _FIXES[exc.option]
        return exc
    text = str(exc)
    if isinstance(exc, HtpasswdError):
        what, _, fix = text.partition(" Recreate the entry")
        return ConfigError(what.rstrip("."), option="--htpasswd", fix=(
            "recreate the entry" + fix.rstrip(".") if fix else
            "give a readable file of USER:BCRYPT lines (`p2preg htpasswd USER >> FILE`)"))
    if isinstance(exc, TLSConfigError):
        option = ("--peer-ca" if "CA bundle" in text else "--tls-key"
                  if text.startswith("TLS key") else "--tls-cert")
        return ConfigError(text, option=option, fix="give a readable PEM certificate and its "
                           "unencrypted key (docs/auth.md, TLS)")
    if isinstance(exc, DataDirLocked):
        return ConfigError(text, option="--data-dir", fix="stop the other node or give this one "
                           "its own --data-dir")
    if isinstance(exc, KeyringError):
        return ConfigError(text, option="--cluster-key-file", fix=_FIXES["--cluster-key-file"])
    if isinstance(exc, UpstreamConfigError):
        option, sep, what = text.partition(": ")
        if not sep:
            option, what = "--upstream", text
        if option.startswith("--") and " " in option:  # "--docker-config PATH: what"
            option, _, path = option.partition(" ")
            what = f"{path}: {what}"
        return ConfigError(what, option=option, source=exc.source,
                           fix="see docs/mirror.md, Upstreams")
    return None


_FIXES = {
    "--cluster-key-file": "one hex key (64 hex digits: `p2preg cluster-key` or `openssl rand "
                          "-hex 32`) per line, readable by the node's user",
    "--join": "write it as HOST:PORT, IPv6 as [ADDR]:PORT",
    "--join-dns": "give NAME or NAME:PORT",
    "--mdns-interface": "give this host's IP address on that interface",
    "--gossip-listen": "give HOST:PORT, e.g. THIS_HOST_IP:7946",
    "--advertise": "give THIS_HOST_IP:PORT",
}


def _serve(args: argparse.Namespace, sources: Sources) -> int:
    from p2preg.logs import setup_logging
    from p2preg.node import Node

    config, found = load_config_with_sources(args)
    sources.update(found)
    setup_logging(config.log_level)
    _scrub_log_handlers()
    held = _HeldLogs()  # start-up lines are shown once the node starts, or dropped for the error
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
        except BaseException as exc:
            await node.stop()
            if isinstance(exc, Exception) and as_config_error(exc) is not None:
                held.discard()
                raise
            data_dir_error = _data_dir_error(exc, config.data_dir)
            if data_dir_error is not None:
                held.discard()
                raise data_dir_error from None
            held.release()
            if isinstance(exc, OSError):
                print(f"p2preg: cannot start: {scrub(str(exc))}", file=sys.stderr)
                return 1
            raise
        held.release()
        await stop.wait()
        await node.stop()
        return 0

    with runner:
        return runner.run(run())


def _data_dir_error(exc: BaseException, data_dir: str) -> ConfigError | None:
    """A file system error on a path inside ``--data-dir`` (not writable, not a directory, a
    full or read-only disk at start) is the operator's to fix: a configuration error."""
    import os

    filename = getattr(exc, "filename", None)
    if not isinstance(exc, OSError) or not filename:
        return None
    root = os.path.abspath(data_dir)
    path = os.path.abspath(os.fsdecode(filename))
    if path != root and not path.startswith(root + os.sep) and not root.startswith(path + os.sep):
        return None
    return ConfigError(f"{path}: {exc.strerror}", option="--data-dir",
                       fix="give a directory the node's user can write (systemd: "
                       "StateDirectory=p2preg)")


class _ScrubbingFormatter(logging.Formatter):
    """Wraps a formatter: registered secrets never reach a log line (``p2preg.config.scrub``)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record))


def _scrub_log_handlers() -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ScrubbingFormatter(handler.formatter))


class _HeldLogs:
    """Holds the root logger's lines while the node starts: a configuration error is then the
    only line printed (``release`` writes them, ``discard`` drops them)."""

    def __init__(self) -> None:
        import logging.handlers

        self.root = logging.getLogger()
        self.handlers = list(self.root.handlers)
        self.memory = logging.handlers.MemoryHandler(capacity=1 << 20,
                                                     flushLevel=logging.CRITICAL + 1)
        self.root.handlers[:] = [self.memory]

    def release(self) -> None:
        if self.root.handlers == [self.memory]:
            self.root.handlers[:] = self.handlers
            for record in self.memory.buffer:
                for handler in self.handlers:
                    if record.levelno >= handler.level:
                        handler.handle(record)
        self.memory.buffer.clear()

    def discard(self) -> None:
        self.memory.buffer.clear()
        self.root.handlers[:] = self.handlers


def _members(args: argparse.Namespace) -> int:
    import json

    from p2preg.gossip.http import (
        MEMBERS_PATH,
        MembersFetchError,
        fetch_members,
        format_members_table,
    )
    from p2preg.operate.client import KEY_ENV, UsageError, load_signer
    from p2preg.operate.signing import signed_headers

    headers = None
    if args.cluster_key_file:
        try:
            signer = load_signer(args.cluster_key_file)
        except UsageError as exc:
            print(scrub(f"p2preg: members: {exc}"), file=sys.stderr)
            return 2
        headers = signed_headers(signer, "GET", MEMBERS_PATH, sender="p2preg-cli")

    async def fetch() -> dict[str, object]:
        import aiohttp

        from p2preg.tlsconfig import client_context

        ssl_context = client_context(args.ca) if args.node.startswith("https://") else None
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10.0),
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context else True),
        ) as session:
            return await fetch_members(args.node, session=session, headers=headers)

    try:
        data = asyncio.run(fetch())
    except MembersFetchError as exc:
        hint = ""
        if "HTTP 404" in str(exc):
            hint = " (this node runs without gossip: --gossip-listen is not set)"
        elif "HTTP 401" in str(exc) and headers is None:
            hint = (" (the members list on a peer listener is signed: pass --cluster-key-file "
                    f"or set ${KEY_ENV})")
        print(scrub(f"p2preg: members: {exc}{hint}"), file=sys.stderr)
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
