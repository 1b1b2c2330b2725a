"""Real ``docker login`` (dockerd 20.10) against the auth middleware over plain HTTP on loopback.

Also pins the documented limit of anonymous read with Basic auth: docker's client refuses to go on
after the ``/v2/`` Basic challenge without credentials, before asking for any manifest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2preg.registry.auth import AuthPolicy, auth_middleware
from p2preg.registry.htpasswd import Htpasswd
from tests.auth.conftest import REALM, USERS
from tests.conftest import require_root, require_tool
from tests.observability.tinyapp import AccessLines, TinyRegistry, serving
from tests.support.daemons import Dockerd, dockerd

pytestmark = pytest.mark.clients


@pytest.fixture
async def docker() -> AsyncIterator[Dockerd]:
    require_tool("dockerd", "docker")
    require_root()
    manager = dockerd()
    daemon = await asyncio.to_thread(manager.__enter__)
    try:
        yield daemon
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def run_docker(daemon: Dockerd, *args: str, stdin: str | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "docker", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=daemon.env,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate((stdin or "").encode()), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_docker_login_then_authenticated_requests_and_no_anonymous_pull(
    docker: Dockerd, htpasswd_path: Path, access_lines: AccessLines
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), anonymous_read=True, realm=REALM)
    app = TinyRegistry(htpasswd_path).app([auth_middleware(policy)])
    async with serving(app) as base:
        host = base.removeprefix("http://")
        code, output = await run_docker(docker, "pull", f"{host}/library/x:latest")
        assert code != 0
        assert "no basic auth credentials" in output
        assert not [r for r in access_lines.records if "/manifests/" in str(r["path"])]

        login = ("login", "--username", "alice", "--password-stdin", host)
        code, output = await run_docker(docker, *login, stdin="wrong")
        assert code != 0
        assert "401 Unauthorized" in output
        code, output = await run_docker(docker, *login, stdin=USERS["alice"])
        assert code == 0, output
        assert "Login Succeeded" in output

        code, output = await run_docker(docker, "pull", f"{host}/library/x:latest")
        assert code != 0  # the tiny app has no manifests
    manifest_requests = [r for r in access_lines.records if "/manifests/" in str(r["path"])]
    assert manifest_requests
    assert {r["user"] for r in manifest_requests} == {"alice"}
