"""``p2preg mirror-config docker|containerd|podman [--write]``: point a host's clients at the node.

Owns: the renderers (``docker_daemon_json``, ``containerd_hosts_files``, ``podman_registries_conf``:
pure functions from the node's address and upstreams to file contents), ``write_with_backup``
(atomic replace, the previous file kept as ``<name>.p2preg-backup-<UTC time>``, an unchanged file
left alone) and ``run_mirror_config`` (the command). What each client needs:

- docker: ``registry-mirrors`` in ``daemon.json`` (merged into the existing file; Docker only
  mirrors docker.io);
- containerd: ``certs.d/<registry>/hosts.toml`` for every configured upstream, the node as a
  pull/resolve host with the registry's own server as fallback (containerd adds ``?ns=``);
- podman (and CRI-O): a drop-in ``registries.conf.d/50-p2preg.conf`` with one ``[[registry]]`` per
  upstream and the node as its mirror (``<node>/<registry>`` for registries other than docker.io;
  the mirror routes by that prefix). The operator's ``registries.conf`` (search list,
  ``short-name-mode``, other registries) is never touched: containers-registries.conf.d(5) merges
  drop-ins over it, a drop-in ``[[registry]]`` replacing the entry with the same prefix.

Must not import aiohttp or the registry/fetch/gossip packages.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2preg.config import Config, ConfigError, split_host_port
from p2preg.upstream.config import (
    DOCKER_HUB,
    UpstreamConfig,
    upstreams_from_config,
)

DOCKER_DAEMON_JSON = Path("/etc/docker/daemon.json")
CONTAINERD_CERTS_D = Path("/etc/containerd/certs.d")
PODMAN_REGISTRIES_CONF_D = Path("/etc/containers/registries.conf.d")
PODMAN_DROP_IN_NAME = "50-p2preg.conf"
CLIENTS = ("docker", "containerd", "podman")


def mirror_address(config: Config, mirror: str | None) -> str:
    """``host:port`` clients should use for the node (``--mirror``, else ``--listen``)."""
    value = mirror or config.listen
    host, port = split_host_port(value, "--mirror" if mirror else "--listen")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def docker_daemon_json(existing: Mapping[str, Any], mirror_url: str) -> dict[str, Any]:
    """``existing`` daemon.json with the node first in ``registry-mirrors`` (others kept)."""
    result = dict(existing)
    current = [m for m in result.get("registry-mirrors", []) if isinstance(m, str)]
    result["registry-mirrors"] = [mirror_url, *(m for m in current if m.rstrip("/") != mirror_url)]
    if mirror_url.startswith("http://") and not _is_loopback(mirror_url):
        host = mirror_url.removeprefix("http://")
        insecure = [r for r in result.get("insecure-registries", []) if isinstance(r, str)]
        if host not in insecure:
            result["insecure-registries"] = [*insecure, host]
    return result


def containerd_hosts_files(
    upstreams: Sequence[UpstreamConfig], mirror_url: str
) -> dict[str, str]:
    """``{registry dir name: hosts.toml text}`` for every upstream."""
    files: dict[str, str] = {}
    for up in upstreams:
        lines = [
            "# Written by p2preg mirror-config: pull through the local p2preg node, fall back",
            f"# to {up.registry} itself when the node cannot answer.",
            f"server = {_toml_str(up.url)}",
            "",
            f"[host.{_toml_str(mirror_url)}]",
            '  capabilities = ["pull", "resolve"]',
        ]
        if mirror_url.startswith("https://"):
            lines.append("  # the node's TLS certificate must be trusted (ca = \"...\")")
        files[up.registry] = "\n".join(lines) + "\n"
    return files


def podman_registries_conf(upstreams: Sequence[UpstreamConfig], mirror_host: str,
                           *, insecure: bool) -> str:
    """A ``registries.conf.d`` drop-in (v2 format) mirroring every upstream through the node.

    It sets no ``unqualified-search-registries`` (a drop-in's list would replace the
    operator's) and nothing else global.
    """
    lines = [
        "# Written by p2preg mirror-config: pull through the local p2preg node. A drop-in:",
        "# registries.conf and its search list stay as they are.",
    ]
    for up in upstreams:
        location = mirror_host if up.registry == DOCKER_HUB else f"{mirror_host}/{up.registry}"
        lines += [
            "",
            "[[registry]]",
            f"prefix = {_toml_str(up.registry)}",
            f"location = {_toml_str(up.registry)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_str(location)}",
            f"insecure = {'true' if insecure else 'false'}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WriteResult:
    """What ``write_with_backup`` did: ``changed`` False when the file already had the text."""

    changed: bool
    backup: Path | None = None


def write_with_backup(path: Path, text: str, now_epoch_s: float) -> WriteResult:
    """Replace ``path`` atomically with ``text``, keeping the old file as a backup; an unchanged
    file is left alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    backup: Path | None = None
    if path.exists():
        if path.read_text() == text:
            return WriteResult(changed=False)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_epoch_s))
        backup = path.with_name(f"{path.name}.p2preg-backup-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = path.with_name(f"{path.name}.p2preg-backup-{stamp}-{n}")
        backup.write_bytes(path.read_bytes())
    tmp = path.with_name(f".{path.name}.p2preg-tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return WriteResult(changed=True, backup=backup)


def render(config: Config, client: str, *, mirror: str | None, target: str | None,
           ) -> dict[Path, str]:
    """``{file path: new content}`` for ``client`` (docker's merges the existing file)."""
    if client not in CLIENTS:
        raise ConfigError(f"mirror-config: unknown client {client!r} (one of {', '.join(CLIENTS)})")
    upstreams = list(upstreams_from_config(config))  # UpstreamConfigError: cli reports it
    host = mirror_address(config, mirror)
    scheme = "https" if config.tls_cert else "http"
    url = f"{scheme}://{host}"
    if client == "docker":
        path = Path(target) if target else DOCKER_DAEMON_JSON
        existing: dict[str, Any] = {}
        if path.exists():
            try:
                loaded = json.loads(path.read_text() or "{}")
            except ValueError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc})", option="--target",
                                  fix="fix or move the file first") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: not a JSON object", option="--target",
                                  fix="fix or move the file first")
            existing = loaded
        return {path: json.dumps(docker_daemon_json(existing, url), indent=2) + "\n"}
    if client == "containerd":
        base = Path(target) if target else CONTAINERD_CERTS_D
        return {base / name / "hosts.toml": text
                for name, text in containerd_hosts_files(upstreams, url).items()}
    return {podman_drop_in_path(target): podman_registries_conf(upstreams, host,
                                                                insecure=scheme == "http")}


def podman_drop_in_path(target: str | None) -> Path:
    """The drop-in file: ``--target`` as a directory (or ``*.conf`` file), default
    ``/etc/containers/registries.conf.d/50-p2preg.conf``. The main ``registries.conf`` is
    refused: replacing it would drop the operator's settings."""
    if not target:
        return PODMAN_REGISTRIES_CONF_D / PODMAN_DROP_IN_NAME
    path = Path(target)
    if path.name == "registries.conf":
        raise ConfigError(
            f"{path} is podman's main file and is not replaced", option="--target", source="flag",
            fix=f"give its drop-in directory: --target {path.parent / 'registries.conf.d'}")
    if path.is_dir() or path.suffix != ".conf":
        return path / PODMAN_DROP_IN_NAME
    return path


def run_mirror_config(
    config: Config, client: str, *, write: bool, mirror: str | None, target: str | None
) -> int:
    """Print the files (or write them with backups); returns the exit status."""
    files = render(config, client, mirror=mirror, target=target)
    for path, text in files.items():
        if not write:
            print(f"# {path}")
            print(text, end="" if text.endswith("\n") else "\n")
            continue
        try:
            result = write_with_backup(path, text, time.time())
        except OSError as exc:
            print(f"p2preg: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return 1
        if not result.changed:
            print(f"unchanged {path}")
            continue
        note = f" (previous file kept as {result.backup})" if result.backup else ""
        print(f"wrote {path}{note}")
    if client == "docker":
        print("note: Docker mirrors only docker.io images; restart dockerd to apply",
              file=sys.stderr)
    elif client == "containerd":
        print("note: point containerd at the directory: [plugins.\"io.containerd.grpc.v1.cri\""
              ".registry] config_path, or ctr --hosts-dir", file=sys.stderr)
    return 0


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _is_loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"
