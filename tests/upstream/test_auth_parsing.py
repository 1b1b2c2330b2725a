"""The pure parts of the challenge flow: header grammar, token JSON, the per-scope cache."""

from __future__ import annotations

import json

import pytest

from p2preg.upstream.auth import (
    Challenge,
    TokenCache,
    parse_challenges,
    parse_token_response,
)


def test_docker_hub_bearer_challenge_is_parsed_with_quoted_commas() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/busybox:pull,push"')
    assert parse_challenges(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull,push",
    })]


def test_several_challenges_in_one_header_are_all_returned() -> None:
    header = 'Basic realm="reg", Bearer realm="http://t/token",service=svc'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": "reg"}),
        Challenge("bearer", {"realm": "http://t/token", "service": "svc"}),
    ]


def test_escaped_quote_inside_a_quoted_value_is_unescaped() -> None:
    assert parse_challenges(r'Basic realm="say \"hi\""') == [
        Challenge("basic", {"realm": 'say "hi"'})]


@pytest.mark.parametrize("header", ["", "   ", ",,,", '"quoted"'])
def test_garbage_headers_give_no_challenge(header: str) -> None:
    assert parse_challenges(header) == []


def test_token_response_uses_expires_in_minus_a_safety_margin() -> None:
    token, expires_at, refresh = parse_token_response(b'{"token": "abc", "expires_in": 300}',
                                                      now=100.0)
    assert token == "abc"
    assert expires_at == pytest.approx(100.0 + 300 - 5)
    assert refresh is None


def test_token_response_accepts_oauth_access_token_and_defaults_to_60s() -> None:
    token, expires_at, _ = parse_token_response(b'{"access_token": "xyz"}', now=0.0)
    assert token == "xyz"
    assert expires_at == pytest.approx(60 - 5)


def test_short_lived_token_keeps_most_of_its_life() -> None:
    answer = parse_token_response(json.dumps({"token": "t", "expires_in": 2}).encode(), 0)
    assert answer.expires_at == pytest.approx(1.8)


def test_token_response_carries_a_rotated_refresh_token_only_when_it_is_a_string() -> None:
    body = {"access_token": "a", "refresh_token": "r2"}
    assert parse_token_response(json.dumps(body).encode(), 0).refresh_token == "r2"
    for bad in ("", 5, None):
        body = {"access_token": "a", "refresh_token": bad}
        assert parse_token_response(json.dumps(body).encode(), 0).refresh_token is None


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"token": ""}', b'{"token": 5}'])
def test_malformed_token_responses_are_rejected(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_token_response(body, 0.0)


def test_token_cache_holds_per_scope_until_expiry() -> None:
    cache = TokenCache()
    pull_a = ("realm", "svc", "repository:a:pull")
    pull_b = ("realm", "svc", "repository:b:pull")
    cache.put(pull_a, "ta", expires_at=10.0)
    assert cache.get(pull_a, now=9.99) == "ta"
    assert cache.get(pull_b, now=0.0) is None
    assert cache.get(pull_a, now=10.0) is None
    assert len(cache) == 0


def test_dropping_a_rejected_token_keeps_a_newer_one() -> None:
    cache = TokenCache()
    key = ("realm", "svc", "scope")
    cache.put(key, "new", expires_at=100.0)
    cache.drop(key, "old")
    assert cache.get(key, 0.0) == "new"
    cache.drop(key, "new")
    assert cache.get(key, 0.0) is None
