"""The decision table of AuthPolicy, and Basic credential parsing (pure, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2preg.registry.auth import (
    AuthPolicy,
    Credentials,
    Decision,
    MalformedAuthorization,
    parse_basic_authorization,
)
from p2preg.registry.htpasswd import Htpasswd

ALLOW, CHALLENGE, DENY = Decision.ALLOW, Decision.CHALLENGE, Decision.DENY
BLOB = "/v2/library/busybox/blobs/sha256:" + "a" * 64


@pytest.fixture
def users(htpasswd_path: Path) -> Htpasswd:
    return Htpasswd(htpasswd_path)


@pytest.mark.parametrize(
    ("method", "path", "authenticated", "expected"),
    [
        ("GET", "/v2/", False, CHALLENGE),
        ("GET", "/v2", False, CHALLENGE),
        ("GET", BLOB, False, CHALLENGE),
        ("HEAD", BLOB, False, CHALLENGE),
        ("PUT", "/v2/x/manifests/v1", False, CHALLENGE),
        ("GET", "/v2/", True, ALLOW),
        ("PUT", "/v2/x/manifests/v1", True, ALLOW),
        ("DELETE", BLOB, True, ALLOW),
        ("GET", "/metrics", False, ALLOW),
        ("GET", "/healthz", False, ALLOW),
        ("GET", "/p2p/v1/blobs/sha256:abc", False, ALLOW),
        ("GET", "/p2p", False, ALLOW),
        ("GET", "/metrics/extra", False, CHALLENGE),
        ("GET", "/healthzz", False, CHALLENGE),
        ("GET", "/favicon.ico", False, CHALLENGE),
    ],
)
def test_without_anonymous_read_everything_but_the_exempt_paths_needs_a_login(
    users: Htpasswd, method: str, path: str, authenticated: bool, expected: Decision
) -> None:
    policy = AuthPolicy(users, anonymous_read=False)
    assert policy.decide(method, path, authenticated=authenticated) is expected


@pytest.mark.parametrize(
    ("method", "path", "authenticated", "expected"),
    [
        ("GET", BLOB, False, ALLOW),
        ("HEAD", BLOB, False, ALLOW),
        ("GET", "/v2/_catalog", False, ALLOW),
        ("GET", "/v2/", False, CHALLENGE),  # so that docker/podman login and push work
        ("HEAD", "/v2/", False, CHALLENGE),
        ("GET", "/v2/", True, ALLOW),
        ("POST", "/v2/x/blobs/uploads/", False, CHALLENGE),
        ("PATCH", "/v2/x/blobs/uploads/u", False, CHALLENGE),
        ("PUT", "/v2/x/manifests/v1", False, CHALLENGE),
        ("DELETE", BLOB, False, CHALLENGE),
        ("OPTIONS", BLOB, False, CHALLENGE),
        ("PUT", "/v2/x/manifests/v1", True, ALLOW),
    ],
)
def test_with_anonymous_read_only_writes_and_the_ping_need_a_login(
    users: Htpasswd, method: str, path: str, authenticated: bool, expected: Decision
) -> None:
    policy = AuthPolicy(users, anonymous_read=True)
    assert policy.decide(method, path, authenticated=authenticated) is expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v2/", ALLOW),
        ("GET", BLOB, ALLOW),
        ("PUT", "/v2/x/manifests/v1", DENY),
        ("POST", "/v2/x/blobs/uploads/", DENY),
        ("DELETE", BLOB, DENY),
    ],
)
def test_a_policy_without_users_is_a_read_only_registry(
    method: str, path: str, expected: Decision
) -> None:
    policy = AuthPolicy(None, anonymous_read=True)
    assert policy.decide(method, path, authenticated=False) is expected


def test_a_policy_that_could_never_allow_anything_is_refused() -> None:
    with pytest.raises(ValueError, match="must allow anonymous reads"):
        AuthPolicy(None, anonymous_read=False)


@pytest.mark.parametrize("realm", ["", 'say "hi"', "back\\slash", "new\nline", "caf\u00e9"])
def test_a_realm_that_would_break_the_challenge_header_is_refused(realm: str) -> None:
    with pytest.raises(ValueError, match="realm"):
        AuthPolicy(None, anonymous_read=True, realm=realm)


def test_the_challenge_names_the_realm() -> None:
    policy = AuthPolicy(None, anonymous_read=True, realm="My Registry")
    assert policy.challenge == 'Basic realm="My Registry"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Basic Og==", None),  # ":" — what podman sends when it has no credentials
        ("Basic YWxpY2U6d29uZGVybGFuZA==", Credentials("alice", "wonderland")),
        ("basic YWxpY2U6d29uZGVybGFuZA==", Credentials("alice", "wonderland")),
        ("Basic YWxpY2U6YTpiOmM=", Credentials("alice", "a:b:c")),
        ("Basic w6l0w6k6cMOkc3M=", Credentials("\u00e9t\u00e9", "p\u00e4ss")),
    ],
)
def test_basic_credentials_are_parsed(header: str | None, expected: Credentials | None) -> None:
    assert parse_basic_authorization(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc.def.ghi",
        "Basic",
        "Basic !!!notbase64",
        "Basic YWxpY2U=",
        "Basic /w==",
        "Digest x",
    ],
)
def test_unusable_authorization_headers_are_malformed(header: str) -> None:
    with pytest.raises(MalformedAuthorization):
        parse_basic_authorization(header)
