"""``benchmarks/fanout.py`` end to end on a tiny image: the product's promise, measured.

Specification: three cold p2preg mirrors joined by gossip, pulling one image at the same time,
make the origin send every blob exactly once (origin egress = 1 x the image); the same three
mirrors without gossip make it send everything three times; Distribution proxies at least as
often. Counted at the origin (its own log) and at the relay in front of it, never from the nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.node import REPO_ROOT

pytestmark = pytest.mark.clients


def test_each_blob_leaves_the_origin_once_for_a_cluster_and_n_times_without_gossip(
    tmp_path: Path,
) -> None:
    require_tool("docker-registry", "curl")
    results_path = tmp_path / "fanout.json"
    argv = [
        sys.executable, "-m", "benchmarks.fanout", "--nodes", "3", "--layers", "2",
        "--layer-mib", "2", "--origin-mib-s", "200", "--results", str(results_path),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(results_path.read_text())
    blobs = report["image"]["blobs"]
    assert blobs == 3  # two layers and the config
    (row,) = report["results"]
    assert row["nodes"] == 3
    assert row["p2preg"]["origin_blob_gets"] == blobs
    assert row["p2preg"]["origin_egress_x_image"] == pytest.approx(1.0, abs=0.05)
    assert row["p2preg-solo"]["origin_blob_gets"] == 3 * blobs
    assert row["p2preg-solo"]["origin_egress_x_image"] == pytest.approx(3.0, abs=0.1)
    assert row["distribution"]["origin_blob_gets"] >= 3 * blobs
    assert "| 3 | p2preg |" in done.stdout
