"""Node configuration: one table of options, read from a TOML file, ``P2PREG_*`` and flags.

Owns: ``OPTIONS`` (every ``p2preg serve`` option: name, type, default, help), the frozen ``Config``
dataclass built from them, and ``load_config`` which applies the precedence
defaults < TOML file (``--config``) < environment (``P2PREG_<NAME>``) < command-line flags.
Units are in the names (``_s``, ``_bytes``). docs/configuration.md documents every option (a test
checks it). Must not import aiohttp or any other p2preg package.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

Mode = Literal["registry", "mirror"]
MODES: tuple[Mode, ...] = ("registry", "mirror")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the option and where it came from."""


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "p2preg")


@dataclass(frozen=True)
class Option:
    """One option: ``name`` is the dataclass field, ``--name-with-dashes`` the flag."""

    name: str
    kind: type  # str, int, float, bool or list (a repeatable string flag)
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "P2PREG_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("mode", str, "mirror", "registry: a plain registry you push to; mirror: a "
           "pull-through cache of the upstreams, shared with the peers", choices=MODES),
    Option("listen", str, "127.0.0.1:5000", "HTTP address of the registry API", "HOST:PORT"),
    Option("data_dir", str, None, "where blobs and metadata live (default: "
           "$XDG_DATA_HOME/p2preg)", "DIR"),
    Option("log_level", str, "info", "log verbosity", choices=LOG_LEVELS),
    Option("tls_cert", str, None, "serve HTTPS with this PEM certificate (needs --tls-key)",
           "FILE"),
    Option("tls_key", str, None, "PEM private key for --tls-cert", "FILE"),
    Option("htpasswd", str, None, "require logins from this htpasswd file (bcrypt entries)",
           "FILE"),
    Option("anonymous_read", bool, False, "with --htpasswd: allow pulls without login, "
           "require it for pushes and deletes"),
    Option("manifest_max_bytes", int, 4 * 1024 * 1024, "largest manifest accepted", "BYTES"),
    Option("header_timeout_s", float, 20.0, "close a connection that has not sent a complete "
           "request head this long after its first byte (slowloris; 0 = never)", "SECONDS"),
    Option("upload_sessions_max", int, 1000, "most open upload sessions on this node; more "
           "answer 429 TOOMANYREQUESTS (0 = unlimited)", "COUNT"),
    Option("upload_sessions_per_client_max", int, 100, "most open upload sessions per client "
           "(user name, else remote address); more answer 429 (0 = unlimited)", "COUNT"),
    # Mirror mode (issue 3)
    Option("upstream", list, [], "REGISTRY=URL: where to pull REGISTRY's content from "
           "(repeatable; default docker.io=https://registry-1.docker.io)", "REGISTRY=URL"),
    Option("upstream_ca", str, None, "CA bundle (PEM) trusted for HTTPS upstreams", "FILE"),
    Option("docker_config", str, None, "Docker config.json to read upstream credentials from",
           "FILE"),
    Option("tag_max_stale_s", float, 86400.0, "when an upstream is down, serve the last known "
           "digest of a tag for at most this long", "SECONDS"),
    Option("upstream_timeout_s", float, 30.0, "connect/idle timeout towards upstreams", "SECONDS"),
    Option("tag_revalidate_s", float, 2.0, "mirror: a tag with a last known digest is answered "
           "with it when the upstream has not answered within this long (the check goes on in "
           "the background)", "SECONDS"),
    # Cache eviction and storage maintenance
    Option("cache_max_bytes", int, 0, "mirror: quota on cached blob bytes; above it the least "
           "recently used blobs are evicted (0 = unlimited)", "BYTES"),
    Option("cache_low_water_ratio", float, 0.9, "eviction frees down to this fraction of "
           "--cache-max-bytes", "RATIO"),
    Option("cache_min_age_s", float, 600.0, "never evict a blob accessed more recently than "
           "this", "SECONDS"),
    Option("upload_max_age_s", float, 86400.0, "drop upload sessions idle longer than this "
           "(0 = never)", "SECONDS"),
    Option("maintenance_interval_s", float, 60.0, "how often upload expiry and eviction run",
           "SECONDS"),
    Option("gc_interval_s", float, 3600.0, "registry: how often garbage collection deletes blobs "
           "no manifest or live link uses (at start, then every SECONDS; 0 = never)", "SECONDS"),
    Option("gc_grace_s", float, 3600.0, "registry: garbage collection keeps any blob committed, "
           "linked into a repository or read less than this ago (longer than your longest push)",
           "SECONDS"),
    # Gossip (issue 4)
    Option("gossip_listen", str, None, "UDP+TCP address for gossip; unset disables the "
           "peer-to-peer layer", "HOST:PORT"),
    Option("join", list, [], "gossip address of a peer to join (repeatable)", "HOST:PORT"),
    Option("join_dns", str, None, "DNS name whose A/AAAA records are peers (a Kubernetes "
           "headless Service); re-resolved periodically", "NAME"),
    Option("mdns", bool, False, "find peers with mDNS (_p2preg._tcp.local.) on --mdns-interface"),
    Option("mdns_interface", list, [], "address of an interface mDNS may use (repeatable; "
           "required with --mdns, never all)", "ADDR"),
    Option("cluster_key_file", str, None, "file of cluster keys (one per line, first signs) for "
           "the HMAC on gossip packets and peer blob requests", "FILE"),
    Option("node_name", str, None, "unique node name in the cluster (default: the host name "
           "plus a random id kept in DATA_DIR/node-id)", "NAME"),
    Option("zone", str, None, "topology label; peers in the same zone are preferred", "ZONE"),
    Option("tombstone_grace_s", float, 3600.0, "keep gossip catalog tombstones (dropped "
           "digests) this long before collecting them; longer than a rolling upgrade", "SECONDS"),
    Option("advertise", str, None, "HTTP address peers fetch from: the --peer-listen address "
           "as peers reach it (default: the bound --peer-listen, else --listen)", "HOST:PORT"),
    Option("peer_listen", str, None, "HTTP address of the peer API (/p2p: blobs, tags, "
           "members), apart from --listen's /v2; unset: served on --listen", "HOST:PORT"),
    Option("allow_open_mirror", bool, False, "let a mirror with upstream credentials serve /v2 "
           "on a non-loopback --listen without --htpasswd (anyone reaching it pulls with them)"),
    Option("peer_ca", str, None, "with --tls-cert: CA bundle that signed the peers' "
           "certificates (peers are fetched from over HTTPS; default: the system store)",
           "FILE"),
)

_OPTION_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one node. Field names match ``OPTIONS``."""

    mode: Mode = "mirror"
    listen: str = "127.0.0.1:5000"
    data_dir: str = field(default_factory=default_data_dir)
    log_level: str = "info"
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    anonymous_read: bool = False
    manifest_max_bytes: int = 4 * 1024 * 1024
    header_timeout_s: float = 20.0
    upload_sessions_max: int = 1000
    upload_sessions_per_client_max: int = 100
    upstream: tuple[str, ...] = ()
    upstream_ca: str | None = None
    docker_config: str | None = None
    tag_max_stale_s: float = 86400.0
    upstream_timeout_s: float = 30.0
    tag_revalidate_s: float = 2.0
    cache_max_bytes: int = 0
    cache_low_water_ratio: float = 0.9
    cache_min_age_s: float = 600.0
    upload_max_age_s: float = 86400.0
    maintenance_interval_s: float = 60.0
    gc_interval_s: float = 3600.0
    gc_grace_s: float = 3600.0
    gossip_listen: str | None = None
    join: tuple[str, ...] = ()
    join_dns: str | None = None
    mdns: bool = False
    mdns_interface: tuple[str, ...] = ()
    cluster_key_file: str | None = None
    node_name: str | None = None
    zone: str | None = None
    tombstone_grace_s: float = 3600.0
    advertise: str | None = None
    peer_listen: str | None = None
    allow_open_mirror: bool = False
    peer_ca: str | None = None

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen, "listen")[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen, "listen")[1]


def split_host_port(value: str, option: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); raises ConfigError."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{option}: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{option}: port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag. Defaults stay None so the precedence can see what was given."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options below "
                        "(keys use underscores: data_dir = \"/var/lib/p2preg\")")
    for opt in OPTIONS:
        shown = "" if opt.default in (None, [], False) else f" (default: {opt.default})"
        env = f" [env {opt.env}]"
        if opt.kind is bool:
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                default=None, help=opt.help + env)
        elif opt.kind is list:
            parser.add_argument(opt.flag, dest=opt.name, action="append", default=None,
                                metavar=opt.metavar, help=opt.help + env)
        else:
            parser.add_argument(opt.flag, dest=opt.name, default=None, metavar=opt.metavar,
                                choices=opt.choices, help=opt.help + shown + env)


def _coerce(opt: Option, value: Any, source: str) -> Any:
    where = f"{opt.name} (from {source})"
    try:
        if opt.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{where}: expected a boolean, got {value!r}")
        if opt.kind is list:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, Sequence):
                items = [str(v) for v in value]
            else:
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            return tuple(items)
        if opt.kind is int:
            if isinstance(value, bool):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(value)
        if opt.kind is float:
            if isinstance(value, bool):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            return float(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"{where}: must be one of {', '.join(opt.choices)}, got {value!r}")
        return value
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration: defaults < TOML (``args.config``) < environment < flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or environ.get("P2PREG_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        for key, value in data.items():
            opt = _OPTION_BY_NAME.get(key.replace("-", "_"))
            if opt is None:
                raise ConfigError(f"config file {config_file}: unknown option {key!r}")
            values[opt.name] = _coerce(opt, value, config_file)
    for opt in OPTIONS:
        if opt.env in environ:
            values[opt.name] = _coerce(opt, environ[opt.env], opt.env)
    if args is not None:
        for opt in OPTIONS:
            given = getattr(args, opt.name, None)
            if given is not None:
                values[opt.name] = _coerce(opt, given, opt.flag)
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-option checks with messages that name the options."""
    split_host_port(config.listen, "--listen")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.peer_ca and not config.tls_cert:
        raise ConfigError("--peer-ca needs --tls-cert: only a node serving HTTPS fetches from its "
                          "peers over HTTPS")
    if config.peer_ca and not Path(config.peer_ca).is_file():
        raise ConfigError(f"--peer-ca {config.peer_ca}: no such file")
    if config.anonymous_read and not config.htpasswd:
        raise ConfigError("--anonymous-read only makes sense with --htpasswd")
    if config.manifest_max_bytes <= 0:
        raise ConfigError("--manifest-max-bytes must be positive")
    if not config.header_timeout_s >= 0 or math.isinf(config.header_timeout_s):
        raise ConfigError("--header-timeout-s must be >= 0 (0 = never)")
    if config.upload_sessions_max < 0 or config.upload_sessions_per_client_max < 0:
        raise ConfigError("--upload-sessions-max and --upload-sessions-per-client-max must be "
                          ">= 0 (0 = unlimited)")
    for value in config.upstream:
        registry, sep, url = value.partition("=")
        if not sep or not registry or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream: expected REGISTRY=http(s)://HOST[:PORT], got {value!r}")
    if not 0 < config.tag_revalidate_s < math.inf:
        raise ConfigError("--tag-revalidate-s must be a positive number of seconds")
    if config.cache_max_bytes < 0:
        raise ConfigError("--cache-max-bytes must be >= 0 (0 = unlimited)")
    if not 0.0 < config.cache_low_water_ratio <= 1.0:
        raise ConfigError("--cache-low-water-ratio must be in (0, 1]")
    if config.cache_min_age_s < 0 or config.upload_max_age_s < 0:
        raise ConfigError("--cache-min-age-s and --upload-max-age-s must be >= 0")
    if not config.tombstone_grace_s > 0:
        raise ConfigError("--tombstone-grace-s must be positive (inf: never collect)")
    if config.maintenance_interval_s <= 0:
        raise ConfigError("--maintenance-interval-s must be positive")
    if not config.gc_interval_s >= 0 or math.isinf(config.gc_interval_s):
        raise ConfigError("--gc-interval-s must be >= 0 (0 = never)")
    if not config.gc_grace_s > 0 or math.isinf(config.gc_grace_s):
        raise ConfigError("--gc-grace-s must be positive: a blob pushed a moment ago is not "
                          "linked yet")
    if config.gossip_listen:
        split_host_port(config.gossip_listen, "--gossip-listen")
        peers_flag, peers_on = ("--peer-listen", config.peer_listen) if config.peer_listen \
            else ("--listen", config.listen)
        if split_host_port(peers_on, peers_flag)[0] in ("0.0.0.0", "::", "") \
                and not config.advertise:
            raise ConfigError(f"with --gossip-listen and a wildcard {peers_flag}, set --advertise "
                              "HOST:PORT: the address peers use to fetch blobs from this node")
    elif config.peer_listen:
        raise ConfigError("--peer-listen needs --gossip-listen: without gossip no peer asks")
    for peer in config.join:
        split_host_port(peer, "--join")
    if config.advertise:
        split_host_port(config.advertise, "--advertise")
    if config.mdns and not config.mdns_interface:
        raise ConfigError("--mdns needs at least one --mdns-interface (mDNS is never sent on all "
                          "interfaces)")
    if (config.join or config.join_dns or config.mdns) and not config.gossip_listen:
        raise ConfigError("--join, --join-dns and --mdns need --gossip-listen")


def config_field_names() -> list[str]:
    return [f.name for f in fields(Config)]
