"""Planted secrets never leave the node in text: not in errors, logs, metrics or /p2p answers.

A real ``p2preg serve`` (debug logging) gets an upstream password inline in an ``[[upstream]]``
table, another in a ``password_file``, an identity token in a Docker config, a cluster key, and
an htpasswd user's password. Its upstream is a fake on loopback that asks for a Bearer token,
hands one out (a planted secret too) and then fails, so the credential and token paths and their
error paths all run. Every byte the node wrote (stderr), and every answer it gave (/v2 errors,
/metrics, /healthz, /p2p/v1/members, a refused /p2p blob request), is searched for each secret
and for the Basic header that carries one. The test also checks the node *did* send the
credentials, so it cannot pass by never touching them.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.node import P2pregNode, http_request
from tests.support.serve import run_serve

INLINE_PASSWORD = "PLANTED-inline-pw-4c1d"
FILE_PASSWORD = "PLANTED-file-pw-9e2b"
IDENTITY_TOKEN = "PLANTED-identity-token-77aa"
BEARER_TOKEN = "PLANTED-bearer-token-5f60"
CLUSTER_KEY = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e7a11a"
HTPASSWD_PASSWORD = "PLANTED-htpasswd-pw-31c3"
SECRETS = (INLINE_PASSWORD, FILE_PASSWORD, IDENTITY_TOKEN, BEARER_TOKEN, CLUSTER_KEY,
           HTPASSWD_PASSWORD)


def _forms(secret: str, user: str = "me") -> list[str]:
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return [secret, basic]


class FakeUpstream(ThreadingHTTPServer):
    """Bearer challenge -> token for the right Basic credentials -> 500 for every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.authorizations: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeUpstream

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.server.authorizations.append(auth)
        if self.path.startswith("/token"):
            if auth.startswith("Basic "):
                body = json.dumps({"token": BEARER_TOKEN, "expires_in": 300}).encode()
                self._send(200, body, {"Content-Type": "application/json"})
            else:
                self._send(401, b"{}")
            return
        if auth != f"Bearer {BEARER_TOKEN}":
            realm = f'Bearer realm="{self.server.url}/token",service="fake"'
            self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"x"}]}',
                       {"WWW-Authenticate": realm, "Content-Type": "application/json"})
            return
        self._send(500, b"boom")

    do_HEAD = do_GET


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _write_files(tmp_path: Path, upstream_url: str) -> Path:
    (tmp_path / "file.password").write_text(FILE_PASSWORD + "\n")
    (tmp_path / "cluster.keys").write_text(CLUSTER_KEY + "\n")
    auth = {"auths": {"quay.io": {"identitytoken": IDENTITY_TOKEN}}}
    (tmp_path / "docker-config.json").write_text(json.dumps(auth))
    toml = tmp_path / "p2preg.toml"
    toml.write_text(f'''
docker_config = "{tmp_path / 'docker-config.json'}"

[[upstream]]
registry = "docker.io"
url = "{upstream_url}"
username = "me"
password = "{INLINE_PASSWORD}"
max_attempts = 1

[[upstream]]
registry = "ghcr.io"
url = "{upstream_url}"
username = "me"
password_file = "file.password"
max_attempts = 1
''')
    return toml


def test_no_planted_secret_reaches_any_output_of_a_running_node(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    toml = _write_files(tmp_path, upstream.url)
    node = P2pregNode(tmp_path / "data", mode="mirror", log_level="debug", extra_args=[
        "--config", str(toml), "--gossip-listen", "127.0.0.1:0",
        "--cluster-key-file", str(tmp_path / "cluster.keys"),
        "--upstream", f"quay.io={upstream.url}",  # adds to the file's tables
    ])
    node.start()
    answers: list[bytes] = []
    try:
        for path in ("/v2/library/app/manifests/latest", "/v2/org/app/manifests/v1?ns=ghcr.io",
                     "/v2/org/app/manifests/v1?ns=quay.io",
                     "/v2/library/app/blobs/sha256:" + "ab" * 32):
            response = node.request("GET", path)
            assert response.status >= 400  # the fake upstream fails every authorised request
            answers.append(response.body)
        for path in ("/metrics", "/healthz", "/p2p/v1/members",
                     "/p2p/v1/blobs/sha256:" + "ab" * 32):
            answers.append(node.request("GET", path).body)
    finally:
        node.stop()
    # The credentials and the token were used: the secrets were there to leak.
    sent = " ".join(upstream.authorizations)
    assert base64.b64encode(f"me:{INLINE_PASSWORD}".encode()).decode() in sent
    assert base64.b64encode(f"me:{FILE_PASSWORD}".encode()).decode() in sent
    assert f"Bearer {BEARER_TOKEN}" in sent
    output = node.log_path.read_text() + "\n".join(a.decode(errors="replace") for a in answers)
    assert '"event": "listening"' in output
    for secret in (INLINE_PASSWORD, FILE_PASSWORD, IDENTITY_TOKEN, BEARER_TOKEN, CLUSTER_KEY):
        for form in _forms(secret):
            assert form not in output, f"a planted secret ({secret[:12]}…) was printed"


def test_no_planted_secret_in_configuration_errors(tmp_path: Path) -> None:
    """Every way a secret-bearing setting can be wrong, as the operator would hit it."""
    (tmp_path / "keys").write_text(f"{CLUSTER_KEY}!!\n")  # neither hex nor base64: not echoed
    cases: list[tuple[list[str], str]] = [
        (["--upstream", f"docker.io=https://me:{INLINE_PASSWORD}@r.example"], ""),
        (["--config", "cfg.toml"], f'[[upstream]]\nregistry = "docker.io"\nurl = "ftp://x"\n'
                                   f'username = "me"\npassword = "{INLINE_PASSWORD}"\n'),
        (["--config", "cfg.toml"], f'[[upstream]]\nregistry = "docker.io"\nurl = "https://x"\n'
                                   f'password = "{INLINE_PASSWORD}"\n'),
        (["--config", "cfg.toml"], f'[[upstream]]\nregistry = "docker.io"\nurl = "https://x"\n'
                                   f'username = "me"\npassword = "{INLINE_PASSWORD}"\n'
                                   'password_file = "f"\n'),
        (["--config", "cfg.toml"], f'[[upstream]]\nregistry = "docker.io"\nurl = "https://x"\n'
                                   f'username = "me"\npassword = ["{INLINE_PASSWORD}"]\n'),
        (["--config", "cfg.toml"], f'upstream = "{INLINE_PASSWORD}"\nlisten = 5\n'),
        (["--config", "cfg.toml"], f'password = "{INLINE_PASSWORD}"\n'),
        (["--cluster-key-file", "keys", "--gossip-listen", "127.0.0.1:0"], ""),
    ]
    for argv, toml in cases:
        if toml:
            (tmp_path / "cfg.toml").write_text(toml)
        done = run_serve(tmp_path, argv, {}, tmp_path / "data")
        assert done.returncode == 2, (argv, toml, done.stderr)
        assert done.stderr.startswith("p2preg: configuration error: "), done.stderr
        for secret in (INLINE_PASSWORD, CLUSTER_KEY):
            assert secret not in done.stderr + done.stdout, (argv, toml, done.stderr)


def test_htpasswd_login_failures_do_not_log_the_password(tmp_path: Path) -> None:
    from p2preg.registry.htpasswd import make_htpasswd_line

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("alice", HTPASSWD_PASSWORD, rounds=4) + "\n")
    node = P2pregNode(tmp_path / "data", mode="registry", htpasswd=htpasswd, log_level="debug")
    node.start()
    try:
        for password in (HTPASSWD_PASSWORD, HTPASSWD_PASSWORD + "-wrong"):
            basic = base64.b64encode(f"alice:{password}".encode()).decode()
            http_request("GET", f"{node.url}/v2/", headers={"Authorization": f"Basic {basic}"})
        body = node.request("GET", "/metrics").body.decode()
    finally:
        node.stop()
    output = node.log_path.read_text() + body
    assert '"user": "alice"' in output  # the login was logged, by user name only
    for form in _forms(HTPASSWD_PASSWORD, "alice") + _forms(HTPASSWD_PASSWORD + "-wrong", "alice"):
        assert form not in output
