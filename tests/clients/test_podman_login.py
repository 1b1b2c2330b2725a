"""With ``--htpasswd``, podman logs in to a node, pushes and pulls; anonymous pushes are refused.

Specification: a node started with an htpasswd file (bcrypt, made by ``htpasswd -Bbn``) accepts
``podman login`` with the right password and then a push and a pull of an image whose container
runs; a wrong password is refused at login; a push without credentials is answered 401 with a
``WWW-Authenticate`` challenge and the OCI ``UNAUTHORIZED`` error, and nothing is stored.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.daemons import Podman, podman, skopeo_copy
from tests.support.images import build_image
from tests.support.node import P2pregNode, running_node

pytestmark = pytest.mark.clients

USER = "alice"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def htpasswd_file(tmp_path: Path) -> Path:
    require_tool("htpasswd")
    line = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = tmp_path / "htpasswd"
    path.write_text(line + "\n")
    return path


@pytest.fixture
def auth_node(tmp_path: Path, htpasswd_file: Path) -> Iterator[P2pregNode]:
    with running_node(tmp_path / "data", htpasswd=htpasswd_file) as node:
        yield node


@pytest.fixture
def pod(auth_node: P2pregNode) -> Iterator[Podman]:
    require_tool("podman", "skopeo")
    with podman(insecure_registries=[auth_node.host]) as client:
        yield client


def login_push_pull_run(pod: Podman, host: str, tls_args: list[str], tmp_path: Path) -> str:
    """podman login, push a test image, remove it locally, pull it back and run it; returns
    the pushed manifest digest after checking the pulled image has the same one."""
    image = build_image(tmp_path / "src", seed=21, hello_text="hello through podman login\n")
    remote = f"{host}/clients/podman-app:v1"
    pod.podman("pull", image.oci_ref)
    local = pod.podman("images", "--format", "{{.ID}}", "--noheading").stdout.split()[0]
    pod.podman("tag", local, remote)

    pod.podman("login", *tls_args, "-u", USER, "--password-stdin", host,
               input_bytes=PASSWORD.encode())  # fmt: skip
    digest_file = tmp_path / "pushed.digest"
    pod.podman("push", *tls_args, "--digestfile", str(digest_file), remote)
    pushed_digest = digest_file.read_text().strip()
    pod.podman("rmi", "--all", "--force")
    pod.podman("pull", *tls_args, remote)
    output = pod.podman("run", "--rm", remote, "cat", "/etc/hello.txt").stdout

    assert output == "hello through podman login\n"
    assert pushed_digest.startswith("sha256:")
    pulled_digest = pod.podman("image", "inspect", "--format", "{{.Digest}}", remote).stdout
    assert pulled_digest.strip() == pushed_digest
    return pushed_digest


def test_podman_login_push_pull_and_run(auth_node: P2pregNode, pod: Podman, tmp_path: Path) -> None:
    login_push_pull_run(pod, auth_node.host, ["--tls-verify=false"], tmp_path)

    assert auth_node.wait_served("GET", "/v2/clients/podman-app/manifests/v1") >= 1
    assert auth_node.wait_served("PUT", "/v2/clients/podman-app/manifests/v1", (201,)) == 1


def test_podman_login_over_tls_with_a_verified_certificate(
    tmp_path: Path, htpasswd_file: Path
) -> None:
    require_tool("podman", "openssl")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    key, cert = tmp_path / "node.key", cert_dir / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with running_node(tmp_path / "data", htpasswd=htpasswd_file, extra_args=tls) as node:
        assert node.url.startswith("https://")
        with podman() as pod:
            login_push_pull_run(pod, node.host, ["--cert-dir", str(cert_dir)], tmp_path)
        assert node.wait_served("PUT", "/v2/clients/podman-app/manifests/v1", (201,)) == 1


def test_podman_login_with_a_wrong_password_is_refused(auth_node: P2pregNode, pod: Podman) -> None:
    result = pod.podman("login", "--tls-verify=false", "-u", USER, "--password-stdin",
                        auth_node.host, input_bytes=b"wrong password", check=False)  # fmt: skip
    assert result.returncode != 0
    assert "invalid username/password" in result.stderr
    assert auth_node.host not in (pod.root / "auth.json").read_text()


def test_unauthenticated_push_is_refused_with_401(
    auth_node: P2pregNode, pod: Podman, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=22)
    result = skopeo_copy(
        image.oci_ref, f"docker://{auth_node.host}/clients/anonymous:v1", check=False
    )
    assert result.returncode != 0
    assert "401" in result.stderr or "unauthorized" in result.stderr.lower()

    response = auth_node.request("POST", "/v2/clients/anonymous/blobs/uploads/")
    assert response.status == 401
    assert "basic" in response.headers.get("www-authenticate", "").lower()
    assert response.error_codes() == ["UNAUTHORIZED"]
    assert auth_node.wait_served("POST", "/v2/clients/anonymous/blobs/uploads/", (401,)) >= 1
    assert auth_node.served("PUT", "/v2/clients/anonymous/manifests/", statuses=(201,)) == 0
