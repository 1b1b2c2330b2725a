"""Configuration precedence, validation and documentation of every option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from p2preg.cli import build_parser
from p2preg.config import OPTIONS, Config, ConfigError, add_arguments, load_config

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_without_any_source() -> None:
    config = load_config(parse(), environ={})
    assert config.listen == "127.0.0.1:5000"
    assert config.mode == "mirror"
    assert config.manifest_max_bytes == 4 * 1024 * 1024
    assert config.data_dir.endswith("p2preg")


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    toml = tmp_path / "p2preg.toml"
    toml.write_text('listen = "127.0.0.1:7000"\nmode = "registry"\nlog_level = "debug"\n'
                    'join = ["a:1", "b:2"]\ngossip_listen = "127.0.0.1:7946"\n')
    env = {"P2PREG_LISTEN": "127.0.0.1:7001", "P2PREG_LOG_LEVEL": "warning"}
    config = load_config(parse("--config", str(toml), "--listen", "127.0.0.1:7002"), environ=env)
    assert config.listen == "127.0.0.1:7002"  # flag
    assert config.log_level == "warning"  # env over file
    assert config.mode == "registry"  # file over default
    assert config.join == ("a:1", "b:2")


def test_environment_lists_and_booleans() -> None:
    env = {"P2PREG_UPSTREAM": "docker.io=http://127.0.0.1:1, ghcr.io=https://ghcr.io",
           "P2PREG_MDNS": "true", "P2PREG_MDNS_INTERFACE": "127.0.0.1",
           "P2PREG_GOSSIP_LISTEN": "127.0.0.1:0"}
    config = load_config(parse(), environ=env)
    assert config.upstream == ("docker.io=http://127.0.0.1:1", "ghcr.io=https://ghcr.io")
    assert config.mdns is True


def test_repeatable_flags_collect_in_order() -> None:
    config = load_config(parse("--upstream", "docker.io=http://x:1", "--upstream",
                               "quay.io=https://quay.io"), environ={})
    assert config.upstream == ("docker.io=http://x:1", "quay.io=https://quay.io")


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--listen", "nope"], {}, "HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], {}, "out of range"),
        (["--tls-cert", "c.pem"], {}, "--tls-key"),
        (["--anonymous-read"], {}, "--htpasswd"),
        (["--upstream", "docker.io"], {}, "REGISTRY="),
        (["--mdns", "--gossip-listen", "127.0.0.1:0"], {}, "--mdns-interface"),
        (["--join", "a:1"], {}, "--gossip-listen"),
        ([], {"P2PREG_MANIFEST_MAX_BYTES": "many"}, "P2PREG_MANIFEST_MAX_BYTES"),
        ([], {"P2PREG_MDNS": "maybe"}, "boolean"),
        ([], {"P2PREG_MODE": "proxy"}, "one of"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(parse(*argv), environ=env)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('lisen = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="unknown option 'lisen'"):
        load_config(parse("--config", str(toml)), environ={})


def test_unreadable_or_invalid_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(parse("--config", str(tmp_path / "missing.toml")), environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(parse("--config", str(bad)), environ={})


def test_options_table_matches_config_fields() -> None:
    assert [o.name for o in OPTIONS] == list(Config.__dataclass_fields__)


def test_every_option_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.flag}" in doc, opt.flag
        assert opt.env in doc, opt.env


def test_serve_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for opt in OPTIONS:
        assert opt.flag in out
