"""Node configuration: one table of options, read from a TOML file, ``P2PREG_*`` and flags.

Owns: ``OPTIONS`` (every ``p2preg serve`` option: name, type, default, help), the frozen ``Config``
dataclass built from them, ``load_config`` which applies the precedence
defaults < TOML file (``--config``) < environment (``P2PREG_<NAME>``) < command-line flags
(list options collect across the sources instead: file, then environment, then flags),
``ConfigError`` (option, source, what, fix: the one-line start-up error), ``Sources`` (where each
value came from) and the secret redaction every error path uses (``redact``, ``scrub``).
Units are in the names (``_s``, ``_bytes``). docs/configuration.md documents every option (a test
checks it). Must not import aiohttp or any other p2preg package.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Mode = Literal["registry", "mirror"]
MODES: tuple[Mode, ...] = ("registry", "mirror")
LOG_LEVELS = ("debug", "info", "warning", "error")


REDACTED = "<redacted>"
# Keys whose values are secrets wherever they appear (TOML tables, JSON, reprs in messages).
SECRET_KEYS = frozenset({"password", "token", "identitytoken", "identity_token", "auth",
                         "secret", "key", "cluster_key", "registrytoken"})
_SECRET_VALUES: set[str] = set()
_MIN_SECRET_LEN = 4  # shorter strings would scrub ordinary words


def register_secret(value: str) -> None:
    """Remember ``value`` (a password, token or key read from configuration) so ``scrub``
    removes it from any text that leaves the process: errors, log lines."""
    value = value.strip()
    if len(value) >= _MIN_SECRET_LEN:
        _SECRET_VALUES.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>``."""
    for secret in sorted(_SECRET_VALUES, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


_URL_USERINFO = re.compile(r"(\w://)[^/@\s'\"]+@")


def redact(value: Any) -> str:
    """A short printable form of a configuration value with secret-named fields masked."""
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{k}={REDACTED if str(k).lower() in SECRET_KEYS else redact(v)}"
            for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(redact(v) for v in value) + "]"
    return scrub(repr(value) if isinstance(value, str) else str(value))


class ConfigError(ValueError):
    """A configuration value is wrong.

    Printed as one line: ``<option> (<source>): <what> — <fix>`` (``cli`` prefixes
    ``p2preg: configuration error:``). ``source`` is filled in from ``Sources`` when the raiser
    does not know it. An error built from a bare message (older call sites) whose message starts
    with a ``--flag`` gets that flag as its option.
    """

    def __init__(self, what: str, *, option: str | None = None, source: str | None = None,
                 fix: str | None = None) -> None:
        message = what
        if option is None:
            match = re.match(r"(--[a-z0-9-]+)[ :]\s*(.*)", what, re.S)
            if match:
                option, what = match.group(1), match.group(2)
        self.option = option
        self.source = source
        self.what = what
        self.fix = fix
        # A bare message keeps its text as str(); the structured form is ``line()``.
        super().__init__(scrub(message) if message is not what else self.line())

    def line(self, sources: Sources | None = None) -> str:
        """The one-line form, secrets scrubbed; ``sources`` names where the option came from."""
        source = self.source
        if source is None and self.option and sources is not None:
            source = sources.of(self.option)
        head = ""
        if self.option:
            head = f"{self.option} ({source}): " if source else f"{self.option}: "
        fix = f" — {self.fix}" if self.fix else ""
        return scrub(" ".join(f"{head}{self.what}{fix}".split()))


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
           "(repeatable, adds to the file's list and its [[upstream]] tables; default "
           "docker.io=https://registry-1.docker.io)", "REGISTRY=URL"),
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
    Option("cache_max_bytes", int, None, "mirror: quota on cached blob bytes; above it the "
           "least recently used blobs are evicted (default: --cache-max-disk-ratio of the data "
           "dir's file system; 0 = unlimited)", "BYTES"),
    Option("cache_max_disk_ratio", float, 0.8, "mirror, without --cache-max-bytes: the cache "
           "may fill the data dir's file system up to this fraction of its size (what other "
           "files use there is subtracted, measured at start; at least 256 MiB)", "RATIO"),
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
    # Integrity and slow readers (issue 10)
    Option("scrub_rate_mib_s", float, 32.0, "background scrub: re-hash stored blobs at most this "
           "fast, quarantining any that no longer match their digest (0 = no scrub)", "MIB_S"),
    Option("scrub_interval_s", float, 86400.0, "background scrub: start a pass over every stored "
           "blob this often (the first one a pass interval after start)", "SECONDS"),
    Option("send_progress_timeout_s", float, 60.0, "drop a reader that accepts no byte of a "
           "response body for this long", "SECONDS"),
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
    Option("metrics_listen", str, None, "HTTP address serving GET /metrics only (e.g. the "
           "node's IP for Prometheus) while /v2 stays on --listen; not a wildcard", "HOST:PORT"),
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
    upstream: tuple[str | Mapping[str, Any], ...] = ()  # "REGISTRY=URL" or an [[upstream]] table
    upstream_ca: str | None = None
    docker_config: str | None = None
    tag_max_stale_s: float = 86400.0
    upstream_timeout_s: float = 30.0
    tag_revalidate_s: float = 2.0
    cache_max_bytes: int | None = None  # None: auto, see resolve_cache_max_bytes
    cache_max_disk_ratio: float = 0.8
    cache_low_water_ratio: float = 0.9
    cache_min_age_s: float = 600.0
    upload_max_age_s: float = 86400.0
    maintenance_interval_s: float = 60.0
    gc_interval_s: float = 3600.0
    gc_grace_s: float = 3600.0
    scrub_rate_mib_s: float = 32.0
    scrub_interval_s: float = 86400.0
    send_progress_timeout_s: float = 60.0
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
    metrics_listen: str | None = None
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
    flag = option if option.startswith("--") else "--" + option.replace("_", "-")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"expected HOST:PORT, got {value!r}", option=flag,
                          fix="write it as HOST:PORT, IPv6 as [ADDR]:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} out of range", option=flag, fix="use a port in 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


# Options that only ``p2preg mirror-config`` reads (its --help lists these and its own).
MIRROR_CONFIG_OPTIONS = ("listen", "tls_cert", "tls_key", "upstream", "upstream_ca",
                         "docker_config")


def add_arguments(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """Add every option (or those named in ``only``) as a flag. Defaults stay None so the
    precedence can see what was given."""
    wanted = None if only is None else set(only)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options below "
                        "(keys use underscores: data_dir = \"/var/lib/p2preg\")")
    for opt in OPTIONS:
        if wanted is not None and opt.name not in wanted:
            continue
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


def _coerce(opt: Option, value: Any, source: str, base_dir: Path | None = None) -> Any:
    def bad(what: str) -> ConfigError:
        return ConfigError(what, option=opt.flag, source=source,
                           fix=f"see `p2preg serve --help` for {opt.flag}")

    try:
        if opt.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise bad(f"expected a boolean (true/false), got {redact(value)}")
        if opt.kind is list:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, Mapping) and opt.name == "upstream":
                value = [value]
            if not isinstance(value, Sequence):
                raise bad(f"expected a list of strings, got {redact(value)}")
            items: list[Any] = []
            for v in value:
                if isinstance(v, Mapping) and opt.name == "upstream":
                    items.append(_upstream_table(v, source, base_dir))
                elif isinstance(v, str):
                    items.append(v)
                else:
                    raise bad(f"expected a list of strings, got {redact(v)}")
            return tuple(items)
        if opt.kind is int:
            if isinstance(value, (bool, float)):
                raise bad(f"expected an integer, got {redact(value)}")
            return int(value)
        if opt.kind is float:
            if isinstance(value, bool):
                raise bad(f"expected a number, got {redact(value)}")
            return float(value)
        if not isinstance(value, str):
            raise bad(f"expected a string, got {redact(value)}")
        if opt.choices and value not in opt.choices:
            raise bad(f"must be one of {', '.join(opt.choices)}, got {redact(value)}")
        return value
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise bad(f"cannot read {redact(value)} as {opt.kind.__name__}") from None


# Keys of an [[upstream]] table whose values are paths, resolved against the TOML file's dir.
_UPSTREAM_PATH_KEYS = ("password_file", "docker_config", "ca_file")


def _upstream_table(table: Mapping[str, Any], source: str,
                    base_dir: Path | None) -> Mapping[str, Any]:
    """An ``[[upstream]]`` table, read-only, with relative paths made absolute and an inline
    password registered as a secret (it is checked by ``p2preg.upstream.config``)."""
    entry = dict(table)
    for key in SECRET_KEYS & set(entry):
        if isinstance(entry[key], str):
            register_secret(entry[key])
    for key in _UPSTREAM_PATH_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and base_dir is not None:
            path = Path(value).expanduser()
            entry[key] = str(path if path.is_absolute() else base_dir / path)
    entry["_source"] = source
    return UpstreamTable(entry)


class UpstreamTable(Mapping[str, Any]):
    """A read-only ``[[upstream]]`` table whose ``repr`` masks secret fields (a ``Config`` is
    printed in debug logs and test failures)."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self._entry = MappingProxyType(dict(entry))

    def __getitem__(self, key: str) -> Any:
        return self._entry[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry)

    def __len__(self) -> int:
        return len(self._entry)

    def __repr__(self) -> str:
        return redact(self._entry)


class Sources:
    """Where each option's value came from: ``default``, ``file PATH``, ``env P2PREG_X``,
    ``flag``; a list option collected from several names them all."""

    def __init__(self) -> None:
        self._by_name: dict[str, list[str]] = {}

    def add(self, name: str, source: str) -> None:
        seen = self._by_name.setdefault(name, [])
        if source not in seen:
            seen.append(source)

    def set(self, name: str, source: str) -> None:
        self._by_name[name] = [source]

    def update(self, other: Sources) -> None:
        self._by_name.update(other._by_name)

    def of(self, option: str) -> str:
        """``option`` is a field name or a ``--flag``."""
        name = option.removeprefix("--").replace("-", "_")
        return " + ".join(self._by_name.get(name, ["default"]))


def _read_toml(path: str) -> dict[str, Any]:
    source = f"file {path}"
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror}", option="--config", source=source,
                          fix="give a readable TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib reports the position only, never the offending value.
        raise ConfigError(f"not valid TOML: {exc}", option="--config", source=source,
                          fix="check the TOML syntax at that line") from None


def load_config(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration: defaults < TOML (``args.config``) < environment < flags."""
    return load_config_with_sources(args, environ)[0]


def load_config_with_sources(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config, Sources]:
    """``load_config`` plus where each value came from (for the start-up error line).

    Scalar options: the last source wins (file < environment < flags). List options collect:
    the file's items, then the environment's, then the flags' (``systemd`` drop-ins and
    ``registries.conf.d`` merge lists the same way); a duplicate ``--join`` or
    ``--mdns-interface`` is kept once, a registry with two upstreams is an error.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = Sources()

    def put(opt: Option, value: Any, source: str) -> None:
        if opt.kind is list:
            merged = [*values.get(opt.name, ()), *value]
            if opt.name != "upstream":
                merged = list(dict.fromkeys(merged))
            values[opt.name] = tuple(merged)
            sources.add(opt.name, source)
        else:
            values[opt.name] = value
            sources.set(opt.name, source)

    config_file = getattr(args, "config", None) or environ.get("P2PREG_CONFIG")
    if config_file:
        data = _read_toml(config_file)
        source = f"file {config_file}"
        base_dir = Path(config_file).resolve().parent
        for key, value in data.items():
            opt = _OPTION_BY_NAME.get(key.replace("-", "_"))
            if opt is None:
                raise ConfigError(f"unknown option {key!r}", option=key, source=source,
                                  fix="see docs/configuration.md for the keys (underscores)")
            put(opt, _coerce(opt, value, source, base_dir), source)
    for opt in OPTIONS:
        if opt.env in environ:
            put(opt, _coerce(opt, environ[opt.env], f"env {opt.env}"), f"env {opt.env}")
    if args is not None:
        for opt in OPTIONS:
            given = getattr(args, opt.name, None)
            if given is not None:
                put(opt, _coerce(opt, given, "flag"), "flag")
    config = Config(**values)
    try:
        validate(config)
    except ConfigError as exc:
        if exc.source is None and exc.option:
            exc.source = sources.of(exc.option)
        raise
    return config, sources


def _need(ok: bool, option: str, what: str, fix: str) -> None:
    if not ok:
        raise ConfigError(what, option=option, fix=fix)


def _is_wildcard_host(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _is_loopback_host(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def validate(config: Config) -> None:
    """Cross-option checks with messages that name the option and the fix."""
    split_host_port(config.listen, "--listen")
    _need(bool(config.tls_cert) == bool(config.tls_key), "--tls-key" if config.tls_cert
          else "--tls-cert", "--tls-cert and --tls-key go together", "set both or neither")
    _need(not (config.peer_ca and not config.tls_cert), "--peer-ca",
          "only a node serving HTTPS fetches from its peers over HTTPS",
          "add --tls-cert/--tls-key or drop --peer-ca")
    _need(not config.peer_ca or Path(config.peer_ca).is_file(), "--peer-ca",
          f"{config.peer_ca}: no such file", "give the PEM bundle that signed the peers' "
          "certificates")
    _need(not (config.anonymous_read and not config.htpasswd), "--anonymous-read",
          "only makes sense with --htpasswd", "add --htpasswd FILE or drop --anonymous-read")
    _need(config.manifest_max_bytes > 0, "--manifest-max-bytes", "must be positive",
          "use e.g. 4194304")
    _need(config.header_timeout_s >= 0 and not math.isinf(config.header_timeout_s),
          "--header-timeout-s", "must be >= 0", "0 = never")
    _need(config.upload_sessions_max >= 0, "--upload-sessions-max", "must be >= 0",
          "0 = unlimited")
    _need(config.upload_sessions_per_client_max >= 0, "--upload-sessions-per-client-max",
          "must be >= 0", "0 = unlimited")
    for value in config.upstream:
        if isinstance(value, Mapping):
            continue  # an [[upstream]] table: checked by p2preg.upstream.config
        registry, sep, url = value.partition("=")
        _need(bool(sep and registry and url.startswith(("http://", "https://"))), "--upstream",
              f"expected REGISTRY=http(s)://HOST[:PORT], got {redact(value)}",
              "e.g. --upstream docker.io=https://registry-1.docker.io")
    _need(config.cache_max_bytes is None or config.cache_max_bytes >= 0, "--cache-max-bytes",
          "must be >= 0", "0 = unlimited; leave unset for --cache-max-disk-ratio")
    _need(0.0 < config.cache_max_disk_ratio <= 1.0, "--cache-max-disk-ratio",
          "must be in (0, 1]", "e.g. 0.8")
    _need(0.0 < config.cache_low_water_ratio <= 1.0, "--cache-low-water-ratio",
          "must be in (0, 1]", "e.g. 0.9")
    _need(config.cache_min_age_s >= 0, "--cache-min-age-s", "must be >= 0", "e.g. 600")
    _need(config.upload_max_age_s >= 0, "--upload-max-age-s", "must be >= 0", "0 = never")
    _need(config.tombstone_grace_s > 0, "--tombstone-grace-s", "must be positive",
          "inf: never collect")
    _need(config.maintenance_interval_s > 0, "--maintenance-interval-s", "must be positive",
          "e.g. 60")
    _need(config.gc_interval_s >= 0 and not math.isinf(config.gc_interval_s), "--gc-interval-s",
          "must be >= 0", "0 = never")
    _need(config.mode != "registry" or config.gc_interval_s == 0
          or config.gc_interval_s >= config.maintenance_interval_s,
          "--gc-interval-s", f"{config.gc_interval_s:g} s is shorter than "
          f"--maintenance-interval-s {config.maintenance_interval_s:g} s: collection runs from "
          "the maintenance loop, so it could not run that often",
          "raise --gc-interval-s or lower --maintenance-interval-s")
    _need(config.gc_grace_s > 0 and not math.isinf(config.gc_grace_s), "--gc-grace-s",
          "must be positive: a blob pushed a moment ago is not linked to its manifest yet",
          "set it longer than your longest push (default 3600)")
    _need(config.scrub_rate_mib_s >= 0 and not math.isinf(config.scrub_rate_mib_s),
          "--scrub-rate-mib-s", "must be >= 0", "0 = no scrub; e.g. 32")
    _need(config.scrub_interval_s > 0, "--scrub-interval-s", "must be positive", "e.g. 86400")
    _need(config.send_progress_timeout_s > 0 and not math.isinf(config.send_progress_timeout_s),
          "--send-progress-timeout-s", "must be positive", "e.g. 60")
    if config.gossip_listen:
        gossip_host, _ = split_host_port(config.gossip_listen, "--gossip-listen")
        peers_flag, peers_on = ("--peer-listen", config.peer_listen) if config.peer_listen \
            else ("--listen", config.listen)
        peers_host = split_host_port(peers_on, peers_flag)[0]
        _need(not (_is_wildcard_host(peers_host) and not config.advertise),
              "--advertise", f"with --gossip-listen and a wildcard {peers_flag}, peers need the "
              "address to fetch blobs from", "set --advertise THIS_HOST_IP:PORT")
        advertised = (split_host_port(config.advertise, "--advertise")[0] if config.advertise
                      else peers_host)
        _need(not (_is_wildcard_host(gossip_host) and not config.mdns_interface
                   and (_is_loopback_host(advertised) or _is_wildcard_host(advertised))),
              "--gossip-listen", f"the wildcard {config.gossip_listen} leaves no address to "
              f"advertise to peers (--advertise/{peers_flag} is {advertised})",
              "set --advertise THIS_HOST_IP:PORT, or --gossip-listen THIS_HOST_IP:PORT")
    else:
        _need(not config.peer_listen, "--peer-listen", "needs --gossip-listen: without gossip "
              "no peer asks", "add --gossip-listen or drop --peer-listen")
    if config.metrics_listen:
        _check_metrics_listen(config)
    for peer in config.join:
        split_host_port(peer, "--join")
    _need(not (config.mdns and not config.mdns_interface), "--mdns",
          "needs at least one --mdns-interface (mDNS is never sent on all interfaces)",
          "add --mdns-interface THIS_HOST_IP")
    _need(not ((config.join or config.join_dns or config.mdns) and not config.gossip_listen),
          "--gossip-listen", "--join, --join-dns and --mdns need it",
          "add --gossip-listen HOST:PORT")


def _check_metrics_listen(config: Config) -> None:
    """``--metrics-listen`` is unauthenticated: one address, never every interface, and not a
    listener the node already has."""
    host, port = split_host_port(config.metrics_listen or "", "--metrics-listen")
    _need(not _is_wildcard_host(host), "--metrics-listen",
          f"the wildcard {config.metrics_listen} would serve /metrics, unauthenticated, on every "
          "interface of the host", "give the one address Prometheus scrapes, e.g. "
          "--metrics-listen THIS_HOST_IP:9746 ($(HOST_IP) in Kubernetes)")
    for flag, other in (("--listen", config.listen), ("--peer-listen", config.peer_listen)):
        if other and port != 0:
            other_host, other_port = split_host_port(other, flag)
            _need((host, port) != (other_host, other_port), "--metrics-listen",
                  f"{config.metrics_listen} is also {flag}", "give /metrics a port of its own")


AUTO_CACHE_FLOOR_BYTES = 256 * 1024 * 1024


def auto_cache_max_bytes(total_bytes: int, used_bytes: int, cache_bytes: int,
                         ratio: float) -> int:
    """The default mirror quota: the cache may grow until the file system is ``ratio`` full.

    What other files use (``used - cache``) is subtracted; never below 256 MiB (0 would mean
    unlimited).
    """
    others = max(0, used_bytes - cache_bytes)
    return max(AUTO_CACHE_FLOOR_BYTES, int(total_bytes * ratio) - others)


def resolve_cache_max_bytes(config: Config, cache_bytes: int) -> int:
    """The quota the node uses: ``--cache-max-bytes`` when set (0 = unlimited), else
    ``auto_cache_max_bytes`` of the data dir's file system."""
    if config.cache_max_bytes is not None:
        return config.cache_max_bytes
    path = Path(config.data_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return auto_cache_max_bytes(usage.total, usage.used, cache_bytes,
                                config.cache_max_disk_ratio)


def config_field_names() -> list[str]:
    return [f.name for f in fields(Config)]
