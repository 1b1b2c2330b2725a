"""``p2preg mirror-config``: the files that point docker, containerd and podman at the node."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from p2preg.cli import main
from p2preg.config import Config, ConfigError
from p2preg.mirrorconfig import WriteResult, render, write_with_backup

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
    (path, text), = render(config(tls_cert="c", tls_key="k"), "podman", mirror="node:5443",
                           target="/x/registries.conf.d").items()
    assert path == Path("/x/registries.conf.d/50-p2preg.conf")
    conf = tomllib.loads(text)
    assert "unqualified-search-registries" not in conf  # a drop-in's list would replace the host's
    by_prefix = {r["prefix"]: r for r in conf["registry"]}
    assert by_prefix["docker.io"]["mirror"] == [{"location": "node:5443", "insecure": False}]
    assert by_prefix["ghcr.io"]["mirror"] == [{"location": "node:5443/ghcr.io",
                                               "insecure": False}]


def test_write_keeps_a_backup_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "registries.conf"
    assert write_with_backup(path, "one\n", 0.0) == WriteResult(changed=True)
    backup = write_with_backup(path, "two\n", 86400.0).backup
    assert backup is not None and backup.read_text() == "one\n"
    assert backup.name == "registries.conf.p2preg-backup-19700102T000000Z"
    assert path.read_text() == "two\n"
    assert write_with_backup(path, "two\n", 99999.0) == WriteResult(changed=False)  # no backup
    assert write_with_backup(path, "three\n", 86400.0).backup != backup  # same second: new name
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
    assert out.startswith("# /etc/containers/registries.conf.d/50-p2preg.conf")
    assert 'location = "127.0.0.1:5000"' in out


def test_podman_write_leaves_the_hosts_registries_conf_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_conf = tmp_path / "registries.conf"
    original = ('unqualified-search-registries = ["quay.io"]\nshort-name-mode = "enforcing"\n'
                '[[registry]]\nprefix = "example.com"\nlocation = "example.com"\n')
    main_conf.write_text(original)
    drop_in_dir = tmp_path / "registries.conf.d"
    argv = ["mirror-config", "podman", "--write", "--target", str(drop_in_dir),
            "--upstream", "docker.io=http://127.0.0.1:5056"]
    assert main(argv) == 0
    assert main_conf.read_text() == original
    drop_in = drop_in_dir / "50-p2preg.conf"
    assert tomllib.loads(drop_in.read_text())["registry"][0]["prefix"] == "docker.io"
    assert capsys.readouterr().out == f"wrote {drop_in}\n"
    assert main(argv) == 0  # a second run changes nothing and says so
    assert capsys.readouterr().out == f"unchanged {drop_in}\n"
    assert sorted(p.name for p in drop_in_dir.iterdir()) == ["50-p2preg.conf"]


def test_podman_refuses_to_replace_the_main_registries_conf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_conf = tmp_path / "registries.conf"
    main_conf.write_text("# the host's\n")
    status = main(["mirror-config", "podman", "--write", "--target", str(main_conf)])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("p2preg: configuration error: --target (flag): ")
    assert f"--target {tmp_path / 'registries.conf.d'}" in err
    assert main_conf.read_text() == "# the host's\n"


def test_mirror_config_help_lists_only_its_own_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping inside flag names
    with pytest.raises(SystemExit):
        main(["mirror-config", "--help"])
    out = capsys.readouterr().out
    flags = set(re.findall(r"^ +(?:-\w, )?(--[a-z][a-z0-9-]+)", out, re.M))
    assert flags == {"--help", "--write", "--mirror", "--target", "--config", "--listen",
                     "--tls-cert", "--tls-key", "--upstream", "--upstream-ca", "--docker-config"}
