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


# ---------------------------------------------------------------- [[upstream]] tables, list merging


def test_upstream_tables_from_the_file_carry_credentials_and_timeouts(tmp_path: Path) -> None:
    from p2preg.upstream.config import upstreams_from_config

    (tmp_path / "hub-token").write_text("tok-123456\n")
    toml = tmp_path / "p2preg.toml"
    toml.write_text('[[upstream]]\nregistry = "docker.io"\nurl = "https://registry-1.docker.io"\n'
                    'username = "me"\npassword_file = "hub-token"\nidle_timeout_s = 60\n'
                    'connect_timeout_s = 1.5\n\n[[upstream]]\nregistry = "ghcr.io"\n'
                    'url = "https://ghcr.io"\nusername = "bot"\npassword = "inline-pw-1"\n')
    config = load_config(parse("--config", str(toml)), environ={})
    ups = upstreams_from_config(config)
    hub, ghcr = ups.get("docker.io"), ups.get("ghcr.io")
    assert hub is not None and ghcr is not None
    assert hub.credentials is not None and hub.credentials.password == "tok-123456"
    assert (hub.idle_timeout_s, hub.connect_timeout_s) == (60.0, 1.5)
    assert ghcr.credentials is not None and ghcr.credentials.password == "inline-pw-1"
    assert "inline-pw-1" not in repr(config) + repr(ups)


def test_upstream_flags_add_to_the_files_list_and_tables(tmp_path: Path) -> None:
    from p2preg.upstream.config import upstreams_from_config

    toml = tmp_path / "p2preg.toml"
    toml.write_text('upstream = ["docker.io=https://registry-1.docker.io"]\n')
    config = load_config(parse("--config", str(toml), "--upstream", "ghcr.io=https://ghcr.io"),
                         environ={"P2PREG_UPSTREAM": "quay.io=https://quay.io"})
    assert upstreams_from_config(config).registries == ["docker.io", "ghcr.io", "quay.io"]


def test_a_registry_in_the_file_and_a_flag_is_an_error_naming_both(tmp_path: Path) -> None:
    from p2preg.upstream.config import UpstreamConfigError, upstreams_from_config

    toml = tmp_path / "p2preg.toml"
    toml.write_text('[[upstream]]\nregistry = "docker.io"\nurl = "https://registry-1.docker.io"\n')
    config = load_config(parse("--config", str(toml), "--upstream", "docker.io=http://x:1"),
                         environ={})
    with pytest.raises(UpstreamConfigError, match=r"docker.io is configured twice \(also by "
                       r"\[\[upstream\]\] #1\)"):
        upstreams_from_config(config)


def test_join_lists_collect_across_sources_without_duplicates(tmp_path: Path) -> None:
    toml = tmp_path / "p2preg.toml"
    toml.write_text('gossip_listen = "127.0.0.1:0"\njoin = ["a:1", "b:2"]\n')
    config = load_config(parse("--config", str(toml), "--join", "b:2", "--join", "c:3"),
                         environ={})
    assert config.join == ("a:1", "b:2", "c:3")


def test_error_names_the_source_of_the_bad_value(tmp_path: Path) -> None:
    from p2preg.config import load_config_with_sources

    toml = tmp_path / "p2preg.toml"
    toml.write_text('listen = "nowhere"\n')
    with pytest.raises(ConfigError) as caught:
        load_config_with_sources(parse("--config", str(toml)), environ={})
    assert caught.value.line().startswith(f"--listen (file {toml}): expected HOST:PORT")
    assert " — " in caught.value.line()


def test_redaction_masks_secret_keys_and_registered_values() -> None:
    from p2preg.config import redact, register_secret, scrub

    assert redact({"registry": "docker.io", "password": "pw-abcdef"}) == (
        "{registry='docker.io', password=<redacted>}")
    register_secret("tok-zyxwvu")
    assert scrub("sent tok-zyxwvu to https://me:pw@host/x") == (
        "sent <redacted> to https://<redacted>@host/x")


@pytest.mark.parametrize(("listen", "advertise", "mdns_if", "ok"), [
    ("127.0.0.1:5000", None, (), False),  # the default --listen: nothing routable to advertise
    ("0.0.0.0:5000", None, (), False),
    ("127.0.0.1:5000", "10.0.0.5:5000", (), True),
    ("10.0.0.5:5000", None, (), True),  # --advertise defaults to a routable --listen
    ("127.0.0.1:5000", None, ("10.0.0.5",), True),
])
def test_a_wildcard_gossip_listen_needs_an_address_to_advertise(
    listen: str, advertise: str | None, mdns_if: tuple[str, ...], ok: bool
) -> None:
    argv = ["--gossip-listen", "0.0.0.0:7946", "--listen", listen]
    if advertise:
        argv += ["--advertise", advertise]
    for addr in mdns_if:
        argv += ["--mdns-interface", addr]
    if ok:
        load_config(parse(*argv), environ={})
    else:
        with pytest.raises(ConfigError, match=r"--gossip-listen|--advertise"):
            load_config(parse(*argv), environ={})


def test_the_default_cache_quota_is_a_fraction_of_the_file_system() -> None:
    from p2preg.config import AUTO_CACHE_FLOOR_BYTES, auto_cache_max_bytes, resolve_cache_max_bytes

    gib = 1 << 30
    # 100 GiB file system, 30 GiB used of which 10 GiB is the cache: 80 - 20 others = 60 GiB.
    assert auto_cache_max_bytes(100 * gib, 30 * gib, 10 * gib, 0.8) == 60 * gib
    assert auto_cache_max_bytes(10 * gib, 10 * gib, 0, 0.8) == AUTO_CACHE_FLOOR_BYTES
    assert resolve_cache_max_bytes(Config(cache_max_bytes=0), 0) == 0  # explicit: unlimited
    assert resolve_cache_max_bytes(Config(cache_max_bytes=5), 0) == 5
    assert resolve_cache_max_bytes(Config(data_dir="/nonexistent/x"), 0) >= AUTO_CACHE_FLOOR_BYTES
