"""``p2preg members`` as an operator runs it: a TLS node with a private CA (``--ca``), and a
node without gossip (a clear hint instead of a bare 404)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.auth.certs import make_self_signed
from tests.support.node import REPO_ROOT, P2pregNode


def members(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SSL_CERT_FILE", None)
    return subprocess.run([sys.executable, "-m", "p2preg", "members", *argv],
                          capture_output=True, text=True, timeout=60, env=env)


def test_members_reaches_a_tls_node_signed_by_a_private_ca_with_ca(tmp_path: Path) -> None:
    pair = make_self_signed(tmp_path / "tls")
    node = P2pregNode(tmp_path / "data", mode="mirror", extra_args=[
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
        "--gossip-listen", "127.0.0.1:0", "--upstream", "docker.io=http://127.0.0.1:9"])
    node.start()
    try:
        assert node.url.startswith("https://")
        trusted = members("--node", node.url, "--ca", str(pair.cert))
        untrusted = members("--node", node.url)
    finally:
        node.stop()
    assert trusted.returncode == 0, trusted.stderr
    assert "alive" in trusted.stdout and "STATUS" in trusted.stdout, trusted.stdout
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
    assert "Traceback" not in trusted.stderr + untrusted.stderr


def test_members_on_a_node_without_gossip_says_so(tmp_path: Path) -> None:
    node = P2pregNode(tmp_path / "data", mode="registry")
    node.start()
    try:
        done = members("--node", node.url)
    finally:
        node.stop()
    assert done.returncode == 1
    assert "this node runs without gossip" in done.stderr
    assert len(done.stderr.splitlines()) == 1
