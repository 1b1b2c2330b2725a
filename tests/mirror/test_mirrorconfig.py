"""``p2preg mirror-config``: the files that point docker, containerd and podman at the node."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from p2preg.cli import main
from p2preg.config import Config, ConfigError
from p2preg.mirrorconfig import render, write_with_backup

UPSTREAMS = ("docker.io=https://registry-1.docker.io", "ghcr.io=https://ghcr.io",
             "127.0.0.1:5056=http://127.0.0.1:5056")


def config(**kw: object) -> Config:
    return Config(upstream=UPSTREAMS, **kw)  # type: ignore[arg-type]


def test_docker_daemon_json_puts_the_node_first_and_keeps_other_settings(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    target.write_text(json.dumps({"registry-mirrors": ["https://old.example"], "debug": True}))
    (path, text), = render(config(), "docker", mirror=None, target=str(target)).items()
    assert path == target
    assert json.loads(text) == {"registry-mirrors": ["http://127.0.0.1:5000",
                                                     "https://old.example"], "debug": True}


def test_docker_marks_a_plain_http_node_off_loopback_insecure() -> None:
    (_, text), = render(config(), "docker", mirror="10.0.0.5:5000", target="/nonexistent/x").items()
    assert json.loads(text)["insecure-registries"] == ["10.0.0.5:5000"]


def test_broken_daemon_json_is_refused_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    target.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        render(config(), "docker", mirror=None, target=str(target))


def test_containerd_gets_one_hosts_toml_per_upstream(tmp_path: Path) -> None:
    files = render(config(listen="0.0.0.0:5000"), "containerd", mirror=None,
                   target=str(tmp_path))
    assert sorted(p.parent.name for p in files) == ["127.0.0.1:5056", "docker.io", "ghcr.io"]
    hub = tomllib.loads(files[tmp_path / "docker.io" / "hosts.toml"])
    assert hub == {"server": "https://registry-1.docker.io",
                   "host": {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}}


def test_podman_mirrors_every_upstream_through_the_node() -> None:
    (_, text), = render(config(tls_cert="c", tls_key="k"), "podman", mirror="node:5443",
                        target="/x/registries.conf").items()
    conf = tomllib.loads(text)
    by_prefix = {r["prefix"]: r for r in conf["registry"]}
    assert by_prefix["docker.io"]["mirror"] == [{"location": "node:5443", "insecure": False}]
    assert by_prefix["ghcr.io"]["mirror"] == [{"location": "node:5443/ghcr.io",
                                               "insecure": False}]


def test_write_keeps_a_backup_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "registries.conf"
    assert write_with_backup(path, "one\n", 0.0) is None
    backup = write_with_backup(path, "two\n", 86400.0)
    assert backup is not None and backup.read_text() == "one\n"
    assert backup.name == "registries.conf.p2preg-backup-19700102T000000Z"
    assert path.read_text() == "two\n"
    assert write_with_backup(path, "two\n", 99999.0) is None  # unchanged: no new backup
    assert write_with_backup(path, "three\n", 86400.0) != backup  # same second: a new name
    assert len(list(path.parent.iterdir())) == 3


def test_command_writes_containerd_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["mirror-config", "containerd", "--write", "--target", str(tmp_path),
                   "--upstream", "docker.io=http://127.0.0.1:5056", "--mirror", "127.0.0.1:5999"])
    assert status == 0
    text = (tmp_path / "docker.io" / "hosts.toml").read_text()
    assert 'server = "http://127.0.0.1:5056"' in text
    assert '[host."http://127.0.0.1:5999"]' in text
    assert "wrote" in capsys.readouterr().out


def test_command_prints_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mirror-config", "podman", "--upstream", "docker.io=https://r"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# /etc/containers/registries.conf")
    assert 'location = "127.0.0.1:5000"' in out
