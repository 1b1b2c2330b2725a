"""Upstream configuration: the --upstream flag, Docker config.json credentials, the TOML shape."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest

from p2preg.upstream.config import (
    Credentials,
    UpstreamConfigError,
    build_upstreams,
    docker_config_credentials,
    parse_upstream_spec,
    upstreams_from_toml,
)


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_upstream_spec_normalizes_docker_hub_aliases() -> None:
    assert parse_upstream_spec("index.docker.io=http://127.0.0.1:5056/") == (
        "docker.io", "http://127.0.0.1:5056")


@pytest.mark.parametrize("spec", ["docker.io", "=http://x", "docker.io=ftp://x",
                                  "docker.io=http://", "a/b=http://x", "x=http://h:99999"])
def test_bad_upstream_specs_are_refused_with_the_flag_named(spec: str) -> None:
    with pytest.raises(UpstreamConfigError, match="--upstream"):
        parse_upstream_spec(spec)


def test_default_upstream_is_docker_hub() -> None:
    ups = build_upstreams([])
    assert ups.registries == ["docker.io"]
    default = ups.get(None)
    assert default is not None
    assert default.url == "https://registry-1.docker.io"


def test_lookup_without_ns_means_docker_hub_and_unknown_registry_is_none() -> None:
    ups = build_upstreams(["docker.io=http://a:1", "ghcr.io=https://ghcr.io"])
    assert ups.get("") is ups.get("docker.io")
    assert ups.get("GHCR.io") is not None
    assert ups.get("quay.io") is None


def test_the_same_registry_twice_is_an_error() -> None:
    with pytest.raises(UpstreamConfigError, match="twice"):
        build_upstreams(["docker.io=http://a:1", "index.docker.io=http://b:2"])


def test_docker_login_credentials_for_docker_hub_are_found() -> None:
    config = {"auths": {"https://index.docker.io/v1/": {"auth": _auth("alice", "s3:cret")}}}
    assert docker_config_credentials(config, "docker.io") == Credentials("alice", "s3:cret")


def test_credentials_are_matched_by_host_with_or_without_scheme() -> None:
    config = {"auths": {"https://ghcr.io": {"username": "bob", "password": "pw"},
                        "quay.io": {"identitytoken": "idt"}}}
    assert docker_config_credentials(config, "ghcr.io") == Credentials("bob", "pw")
    assert docker_config_credentials(config, "quay.io") == Credentials(
        "<token>", "idt", identity_token="idt")


def test_an_identity_token_wins_over_the_placeholder_login_stored_beside_it() -> None:
    user = "00000000-0000-0000-0000-000000000000"
    config = {"auths": {"myreg.azurecr.io": {"auth": _auth(user, ""), "identitytoken": "rt"}}}
    creds = docker_config_credentials(config, "myreg.azurecr.io")
    assert creds == Credentials(user, "rt", identity_token="rt")
    assert docker_config_credentials(config, "docker.io") is None


def test_broken_auth_entries_are_ignored() -> None:
    config = {"auths": {"ghcr.io": {"auth": "%%%not base64"}, "x": "nonsense"}}
    assert docker_config_credentials(config, "ghcr.io") is None


def test_credentials_never_show_in_repr() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


def test_build_reads_credentials_from_a_docker_config() -> None:
    config = {"auths": {"127.0.0.1:5056": {"auth": _auth("u", "p")}}}
    ups = build_upstreams(["127.0.0.1:5056=http://127.0.0.1:5056"], docker_config=config,
                          timeout_s=12)
    up = ups.get("127.0.0.1:5056")
    assert up is not None
    assert up.credentials == Credentials("u", "p")
    assert up.idle_timeout_s == 12
    assert up.connect_timeout_s == 2


def test_toml_shape_with_password_file_and_docker_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "docker.json").write_text(json.dumps(
        {"auths": {"ghcr.io": {"auth": _auth("gh", "tok")}}}))
    table = tomllib.loads("""
        [[upstream]]
        registry = "docker.io"
        url = "https://registry-1.docker.io"
        username = "me"
        password_file = "pw"
        idle_timeout_s = 20

        [[upstream]]
        registry = "ghcr.io"
        url = "https://ghcr.io"
        docker_config = "docker.json"
        ca_file = "ca.pem"
        max_attempts = 2
    """)
    ups = upstreams_from_toml(table, base_dir=tmp_path)
    hub, gh = ups.get("docker.io"), ups.get("ghcr.io")
    assert hub is not None and gh is not None
    assert hub.credentials == Credentials("me", "from-file")
    assert hub.idle_timeout_s == 20.0
    assert gh.credentials == Credentials("gh", "tok")
    assert gh.ca_file == str(tmp_path / "ca.pem")
    assert gh.max_attempts == 2


@pytest.mark.parametrize("body, message", [
    ('[[upstream]]\nurl = "http://x"', "registry is required"),
    ('[[upstream]]\nregistry = "a"\nurl = "http://x"\ncolour = "red"', "unknown key"),
    ('[[upstream]]\nregistry = "a"\nurl = "http://x"\nusername = "u"', "go together"),
    ('[[upstream]]\nregistry = "a"\nurl = "http://x"\nidle_timeout_s = 0', "positive"),
    ('[[upstream]]\nregistry = "a"\nurl = "http://x"\nmax_attempts = true', "integer"),
    ('upstream = 3', "array"),
])
def test_toml_mistakes_are_reported_by_entry_and_key(body: str, message: str) -> None:
    with pytest.raises(UpstreamConfigError, match=message):
        upstreams_from_toml(tomllib.loads(body))
