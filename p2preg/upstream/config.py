"""Which upstream serves which registry host, with what credentials and trust.

Owns: ``UpstreamConfig`` (one registry host -> one base URL, credentials, CA bundle, timeouts),
``Upstreams`` (the set a node knows, looked up by the registry name a client asks for),
``parse_upstream_spec`` (the ``--upstream REGISTRY=URL`` flag), ``docker_config_credentials`` (a
Docker ``config.json`` ``auths`` lookup) and ``upstreams_from_toml`` (the TOML shape documented in
docs/mirror.md), and ``upstreams_from_config`` (the node's ``Config`` -> ``Upstreams``). Pure: no
I/O besides reading the files it is pointed at. Must not import aiohttp or any p2preg package
other than the leaf ``p2preg.config``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2preg.config import Config, register_secret

DOCKER_HUB = "docker.io"
DEFAULT_FIRST_BYTE_TIMEOUT_S = 5.0
DEFAULT_UPSTREAM_SPEC = "docker.io=https://registry-1.docker.io"
# Names Docker tooling uses for Docker Hub; all of them mean ``docker.io``.
_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# Keys under which ``docker login`` stores Docker Hub credentials in config.json.
_DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                         "registry-1.docker.io", "https://registry-1.docker.io")


class UpstreamConfigError(ValueError):
    """An upstream setting is wrong; the message names the setting and the value (never a
    secret). ``source`` names the file or flag it came from, when known."""

    source: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, or an identity token, for one upstream. Never printed.

    ``identity_token`` is an OAuth2 refresh token (what ``docker login`` stores as
    ``identitytoken`` for registries such as Azure Container Registry or Harbor with OIDC): tokens
    are then asked for with the OAuth2 ``POST`` flow (``auth.Authenticator``).
    """

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One registry host (``docker.io``, ``ghcr.io``…) and where to fetch its content.

    ``url`` is the scheme + authority (+ optional path prefix) of the registry API, without
    ``/v2``. Three deadlines: ``connect_timeout_s`` bounds opening a TCP connection;
    ``first_byte_timeout_s`` bounds the wait for the response headers after that (an upstream
    that accepts connections and never answers fails in connect + first byte, not in the idle
    timeout); ``idle_timeout_s`` bounds the wait for each body chunk (a stalled body fails, a
    slow but moving one does not). Failed attempts are retried up to ``max_attempts`` times, but
    no retry starts once ``retry_budget_s`` would be exceeded: a client waiting on an unreachable
    upstream gets its error (or the last known tag) within a few seconds. After a request gave
    up, the upstream's circuit breaker refuses requests at once for ``breaker_open_s`` (doubling
    up to ``breaker_max_open_s`` while probes keep failing; see ``upstream.breaker``).
    """

    registry: str
    url: str
    credentials: Credentials | None = None
    ca_file: str | None = None
    connect_timeout_s: float = 2.0
    first_byte_timeout_s: float = DEFAULT_FIRST_BYTE_TIMEOUT_S
    idle_timeout_s: float = 30.0
    max_attempts: int = 4
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    retry_budget_s: float = 4.0
    breaker_open_s: float = 5.0
    breaker_max_open_s: float = 60.0

    @property
    def is_https(self) -> bool:
        return self.url.startswith("https://")

    @property
    def host(self) -> str:
        """``host[:port]`` of ``url`` (what a hosts.toml or registries.conf names)."""
        return urlsplit(self.url).netloc


def normalize_registry(name: str) -> str:
    """Lowercase ``name`` and map every Docker Hub alias to ``docker.io``."""
    lowered = name.strip().lower()
    return DOCKER_HUB if lowered in _DOCKER_HUB_ALIASES else lowered


def _check_registry_name(name: str, where: str) -> str:
    if not name or any(c in name for c in "/?#@ \t") or name.startswith((".", "-", ":")):
        raise UpstreamConfigError(f"{where}: {name!r} is not a registry host name")
    return normalize_registry(name)


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    shown = _shown_url(url)
    if parts.username is not None or parts.password is not None:
        raise UpstreamConfigError(f"{where}: credentials in the URL {shown}; use username and "
                                  "password_file (an [[upstream]] table) or --docker-config")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UpstreamConfigError(f"{where}: expected http(s)://HOST[:PORT], got {shown}")
    try:
        _ = parts.port
    except ValueError:
        raise UpstreamConfigError(f"{where}: bad port in {shown}") from None
    return url.rstrip("/")


def _shown_url(url: str) -> str:
    """``url`` for a message: any ``user:password@`` part is masked."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "<redacted>@" + rest.split("@", 1)[1]
    return repr(f"{scheme}{sep}{rest}")


def parse_upstream_spec(spec: str) -> tuple[str, str]:
    """``"REGISTRY=URL"`` (the ``--upstream`` flag) -> (normalized registry, URL without ``/``)."""
    registry, sep, url = spec.partition("=")
    if not sep:
        raise UpstreamConfigError(f"--upstream: expected REGISTRY=URL, got {_shown_url(spec)}")
    return _check_registry_name(registry, "--upstream"), _check_url(url.strip(), "--upstream")


def docker_config_credentials(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """Find credentials for ``registry`` in a parsed Docker ``config.json``.

    Reads ``auths[KEY].auth`` (base64 ``user:password``), ``username``/``password`` or
    ``identitytoken``. Credential helpers (``credsStore``, ``credHelpers``) are not run: they are
    programs, and a node must not execute whatever a config file names.
    """
    auths = config.get("auths")
    if not isinstance(auths, Mapping):
        return None
    wanted = normalize_registry(registry)
    keys: Iterable[str] = _DOCKER_HUB_AUTH_KEYS if wanted == DOCKER_HUB else ()
    candidates = [*keys, wanted, f"https://{wanted}", f"http://{wanted}", f"https://{wanted}/v1/"]
    for key, entry in auths.items():
        if not isinstance(key, str) or not isinstance(entry, Mapping):
            continue
        host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if key in candidates or normalize_registry(host) == wanted:
            creds = _credentials_from_entry(entry)
            if creds is not None:
                return creds
    return None


def _credentials_from_entry(entry: Mapping[str, Any]) -> Credentials | None:
    user, password = _user_password(entry)
    token = entry.get("identitytoken")
    for secret in (password, token):
        if isinstance(secret, str):
            register_secret(secret)
    if isinstance(token, str) and token:
        # As docker does: an identity token wins over a user name and password stored beside it
        # (``docker login`` to such registries stores a placeholder user with no password).
        return Credentials(user or "<token>", token, identity_token=token)
    if user:
        return Credentials(user, password)
    return None


def _user_password(entry: Mapping[str, Any]) -> tuple[str, str]:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        user, sep, password = decoded.partition(":")
        if sep and user:
            return user, password
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return name, secret
    return "", ""


def load_docker_config(path: str | Path) -> dict[str, Any]:
    """Read a Docker ``config.json``; a clear error when it is not a JSON object."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise UpstreamConfigError(f"--docker-config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UpstreamConfigError(f"--docker-config {path}: not a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The upstreams of one node, by normalized registry name."""

    by_registry: Mapping[str, UpstreamConfig]

    def get(self, registry: str | None) -> UpstreamConfig | None:
        """The upstream for ``registry`` (``None`` or empty means Docker Hub)."""
        return self.by_registry.get(normalize_registry(registry) if registry else DOCKER_HUB)

    def __iter__(self) -> Any:
        return iter(self.by_registry.values())

    def __len__(self) -> int:
        return len(self.by_registry)

    @property
    def registries(self) -> list[str]:
        return sorted(self.by_registry)


def build_upstreams(
    specs: Sequence[str | Mapping[str, Any]],
    *,
    ca_file: str | None = None,
    docker_config: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    credentials: Mapping[str, Credentials] | None = None,
) -> Upstreams:
    """Upstreams from ``--upstream`` specs (default: Docker Hub) and shared options.

    A spec is ``"REGISTRY=URL"`` or a TOML table (see ``upstreams_from_toml``; its own settings
    win). ``credentials`` (per registry) win over ``docker_config``. A registry named twice is an
    error.
    """
    result: dict[str, UpstreamConfig] = {}
    origin: dict[str, str] = {}
    tables = 0
    for spec in specs or (DEFAULT_UPSTREAM_SPEC,):
        if isinstance(spec, Mapping):
            source = spec.get("_source")
            where = f"[[upstream]] #{tables + 1}"
            tables += 1
            try:
                (entry,) = upstreams_from_toml({"upstream": [spec]}, where=where)
            except UpstreamConfigError as exc:
                exc.source = source
                raise
            if entry.registry in result:
                raise UpstreamConfigError(f"{where}: {entry.registry} is configured twice "
                                          f"(also by {origin[entry.registry]})")
            origin[entry.registry] = where
            if entry.credentials is None and docker_config is not None:
                creds = docker_config_credentials(docker_config, entry.registry)
                entry = replace(entry, credentials=creds)
            if entry.ca_file is None and ca_file is not None:
                entry = replace(entry, ca_file=ca_file)
            result[entry.registry] = entry
            continue
        registry, url = parse_upstream_spec(spec)
        if registry in result:
            raise UpstreamConfigError(f"--upstream: {registry} is configured twice (also by "
                                      f"{origin[registry]}); list files and flags add up")
        origin[registry] = f"--upstream {spec}"
        creds = (credentials or {}).get(registry)
        if creds is None and docker_config is not None:
            creds = docker_config_credentials(docker_config, registry)
        extra: dict[str, Any] = {}
        if timeout_s is not None:
            if timeout_s <= 0:
                raise UpstreamConfigError("upstream timeout must be positive")
            extra = {"connect_timeout_s": min(timeout_s, 2.0),
                     "first_byte_timeout_s": min(timeout_s, DEFAULT_FIRST_BYTE_TIMEOUT_S),
                     "idle_timeout_s": timeout_s}
        result[registry] = UpstreamConfig(registry, url, creds, ca_file, **extra)
    return Upstreams(result)


def upstreams_from_config(config: Config) -> Upstreams:
    """The node's upstreams: ``--upstream`` (default Docker Hub), ``--upstream-ca``,
    ``--docker-config`` credentials and ``--upstream-timeout-s``. Every CA bundle named is
    loaded once here, so a missing or broken one stops the node at start, not at its first
    pull."""
    docker = load_docker_config(config.docker_config) if config.docker_config else None
    specs: list[str | Mapping[str, Any]] = list(config.upstream)
    upstreams = build_upstreams(specs, ca_file=config.upstream_ca, docker_config=docker,
                                timeout_s=config.upstream_timeout_s)
    for up in upstreams:
        if up.ca_file is not None:
            where = "--upstream-ca" if up.ca_file == config.upstream_ca else \
                f"[[upstream]] {up.registry}.ca_file"
            check_ca_file(up.ca_file, where)
    return upstreams


def check_ca_file(path: str, where: str) -> None:
    """Raise ``UpstreamConfigError`` unless ``path`` is a PEM bundle ``ssl`` can load."""
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise UpstreamConfigError(f"{where}: {path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise UpstreamConfigError(f"{where}: {path}: not a usable PEM CA bundle ({reason})"
                                  ) from None


def upstreams_from_toml(table: Mapping[str, Any], *, base_dir: Path | None = None,
                        where: str | None = None) -> Upstreams:
    """Upstreams from the ``[[upstream]]`` array of a node's TOML file (see docs/mirror.md).

    Each entry: ``registry``, ``url``, and optionally ``username`` + ``password`` (or
    ``password_file``), ``docker_config`` (a config.json path), ``ca_file``,
    ``connect_timeout_s``, ``first_byte_timeout_s``, ``idle_timeout_s``, ``retry_budget_s``,
    ``breaker_open_s``, ``breaker_max_open_s``, ``max_attempts``. Relative
    paths are resolved against ``base_dir`` (the TOML file's directory).
    """
    given_where = where
    entries = table.get("upstream", [])
    if not isinstance(entries, list):
        raise UpstreamConfigError("[[upstream]] must be an array of tables")
    known = {"registry", "url", "username", "password", "password_file", "docker_config",
             "ca_file", *_TOML_SECONDS, "max_attempts", "_source"}
    result: dict[str, UpstreamConfig] = {}
    for i, entry in enumerate(entries):
        where = given_where or f"[[upstream]] #{i + 1}"
        if not isinstance(entry, Mapping):
            raise UpstreamConfigError(f"{where}: must be a table")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise UpstreamConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        registry = _check_registry_name(_str(entry, "registry", where, required=True) or "", where)
        url = _check_url(_str(entry, "url", where, required=True) or "", where)
        if registry in result:
            raise UpstreamConfigError(f"{where}: {registry} is configured twice")
        creds = _toml_credentials(entry, registry, where, base_dir)
        ca = _str(entry, "ca_file", where)
        numbers: dict[str, Any] = {}
        for key in _TOML_SECONDS:
            if key in entry:
                value = entry[key]
                if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                    raise UpstreamConfigError(f"{where}.{key}: must be a positive number")
                numbers[key] = float(value)
        if "max_attempts" in entry:
            attempts = entry["max_attempts"]
            if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
                raise UpstreamConfigError(f"{where}.max_attempts: must be an integer >= 1")
            numbers["max_attempts"] = attempts
        result[registry] = UpstreamConfig(
            registry, url, creds, str(_resolve(ca, base_dir)) if ca else None, **numbers
        )
    return Upstreams(result)


_TOML_SECONDS = ("connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s", "retry_budget_s",
                 "breaker_open_s", "breaker_max_open_s")


def _toml_credentials(
    entry: Mapping[str, Any], registry: str, where: str, base_dir: Path | None
) -> Credentials | None:
    user = _str(entry, "username", where)
    password = _str(entry, "password", where)
    password_file = _str(entry, "password_file", where)
    if password_file is not None:
        if password is not None:
            raise UpstreamConfigError(f"{where}: password and password_file are exclusive")
        try:
            password = _resolve(password_file, base_dir).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
            raise UpstreamConfigError(f"{where}.password_file: cannot read {password_file} "
                                      f"({reason})") from None
    if password is not None:
        register_secret(password)
    if user is not None or password is not None:
        if not user or password is None:
            raise UpstreamConfigError(f"{where}: username and password go together")
        return Credentials(user, password)
    docker_config = _str(entry, "docker_config", where)
    if docker_config is not None:
        return docker_config_credentials(
            load_docker_config(_resolve(docker_config, base_dir)), registry
        )
    return None


def _str(entry: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise UpstreamConfigError(f"{where}: {key} is required")
        return None
    if not isinstance(value, str):
        shown = "<redacted>" if "password" in key else type(value).__name__
        raise UpstreamConfigError(f"{where}.{key}: must be a string, got {shown}")
    return value


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p
