"""``p2preg members`` as an operator runs it: a TLS node with a private CA (``--ca``), a node
without gossip (a clear hint instead of a bare 404), and a node whose members list is only on its
signed peer listener (``--cluster-key-file``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.auth.certs import make_self_signed
from tests.support.cluster import CLUSTER_KEY
from tests.support.node import REPO_ROOT, P2pregNode


def members(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("SSL_CERT_FILE", "P2PREG_CLUSTER_KEY_FILE")}
    env = {**base, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
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


def test_members_signs_for_a_node_whose_members_list_is_only_on_its_peer_listener(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "cluster.keys"
    keys.write_text(CLUSTER_KEY + "\n")
    wrong = tmp_path / "other.keys"
    wrong.write_text("ab" * 32 + "\n")
    node = P2pregNode(tmp_path / "data", mode="mirror", extra_args=[
        "--node-name", "solo", "--gossip-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.2:0",
        "--cluster-key-file", str(keys), "--upstream", "docker.io=http://127.0.0.1:9"])
    node.start()
    try:
        (listening,) = [e for e in node.events() if e.get("event") == "listening"]
        peer_url = listening["peer_url"]
        unsigned = members("--node", peer_url)
        signed = members("--node", peer_url, "--cluster-key-file", str(keys))
        from_env = members("--node", peer_url, "--json", env={"P2PREG_CLUSTER_KEY_FILE": str(keys)})
        wrongly_signed = members("--node", peer_url, "--cluster-key-file", str(wrong))
        missing_key = members("--node", peer_url, "--cluster-key-file", str(tmp_path / "none"))
    finally:
        node.stop()
    assert unsigned.returncode == 1
    assert "HTTP 401" in unsigned.stderr and "pass --cluster-key-file" in unsigned.stderr
    assert signed.returncode == 0, signed.stderr
    assert "solo" in signed.stdout and "alive" in signed.stdout, signed.stdout
    assert from_env.returncode == 0, from_env.stderr
    assert json.loads(from_env.stdout)["self"] == "solo"
    assert wrongly_signed.returncode == 1 and "HTTP 401" in wrongly_signed.stderr
    assert "pass --cluster-key-file" not in wrongly_signed.stderr  # it did: the key is wrong
    assert missing_key.returncode == 2 and len(missing_key.stderr.splitlines()) == 1
    assert CLUSTER_KEY not in "".join(
        r.stdout + r.stderr for r in (unsigned, signed, from_env, wrongly_signed, missing_key))
    assert "Traceback" not in "".join(
        r.stderr for r in (unsigned, signed, from_env, wrongly_signed, missing_key))
