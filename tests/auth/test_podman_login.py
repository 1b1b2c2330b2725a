"""Real ``podman login`` against the auth middleware, over plain HTTP and over TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2preg.registry.auth import AuthPolicy, auth_middleware
from p2preg.registry.htpasswd import Htpasswd
from p2preg.tlsconfig import server_context
from tests.auth.certs import make_self_signed
from tests.auth.conftest import REALM, USERS
from tests.conftest import require_tool
from tests.observability.tinyapp import AccessLines, TinyRegistry, serving

pytestmark = pytest.mark.clients


@dataclass
class Podman:
    home: Path

    @property
    def authfile(self) -> Path:
        return self.home / "auth.json"

    def env(self) -> dict[str, str]:
        run = self.home / "run"
        run.mkdir(exist_ok=True)
        registries = self.home / "registries.conf"
        registries.write_text("")
        storage = self.home / "storage.conf"
        storage.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{run}/storage"\n'
            f'graphroot = "{self.home}/graph"\n'
        )
        containers = self.home / "containers.conf"
        containers.write_text('[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n')
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(run),
            "CONTAINERS_REGISTRIES_CONF": str(registries),
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
        }

    async def login(self, host: str, user: str, password: str, *tls: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "podman", "login", *tls, "--authfile", str(self.authfile),
            "--username", user, "--password-stdin", host,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env(),
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(password.encode()), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, output.decode(errors="replace")

    def saved_auth(self, host: str) -> str:
        auths = json.loads(self.authfile.read_text())["auths"]
        return base64.b64decode(auths[host]["auth"]).decode()


@pytest.fixture
def podman(tmp_path: Path) -> Podman:
    require_tool("podman")
    home = tmp_path / "podman"
    home.mkdir()
    return Podman(home)


@pytest.mark.parametrize("anonymous_read", [False, True])
async def test_podman_login_over_http_accepts_the_password_and_refuses_a_wrong_one(
    podman: Podman, htpasswd_path: Path, access_lines: AccessLines, anonymous_read: bool
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), anonymous_read=anonymous_read, realm=REALM)
    app = TinyRegistry(htpasswd_path).app([auth_middleware(policy)])
    async with serving(app) as base:
        host = base.removeprefix("http://")
        code, output = await podman.login(host, "alice", "wrong", "--tls-verify=false")
        assert code != 0
        assert "invalid username/password" in output
        assert not podman.authfile.exists() or host not in podman.authfile.read_text()
        code, output = await podman.login(host, "alice", USERS["alice"], "--tls-verify=false")
        assert code == 0, output
        assert "Login Succeeded" in output
    assert podman.saved_auth(host) == f"alice:{USERS['alice']}"
    logged_in = [r for r in access_lines.records if r["path"] == "/v2/" and r["status"] == 200]
    assert [r["user"] for r in logged_in] == ["alice"]


async def test_podman_login_over_tls_with_a_trusted_certificate_or_without_verification(
    podman: Podman, htpasswd_path: Path, tmp_path: Path
) -> None:
    certificate = make_self_signed(tmp_path / "tls")
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(certificate.cert.read_bytes())
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    app = TinyRegistry(htpasswd_path).app([auth_middleware(policy)])
    context = server_context(certificate.cert, certificate.key)
    async with serving(app, ssl_context=context) as base:
        host = base.removeprefix("https://")
        code, output = await podman.login(host, "bob", USERS["bob"])
        assert code != 0
        assert "certificate" in output
        code, output = await podman.login(host, "bob", USERS["bob"], f"--cert-dir={cert_dir}")
        assert code == 0, output
        code, output = await podman.login(host, "bob", USERS["bob"], "--tls-verify=false")
        assert code == 0, output
        code, output = await podman.login(host, "bob", "nope", f"--cert-dir={cert_dir}")
        assert code != 0
        assert "invalid username/password" in output
    assert podman.saved_auth(host) == f"bob:{USERS['bob']}"
