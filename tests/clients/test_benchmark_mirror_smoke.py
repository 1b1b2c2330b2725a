"""``benchmarks/mirror.py`` end to end on small sizes: every row it reports is measured for real.

Specification: against a real Distribution origin and a real Distribution proxy, the benchmark
completes, both mirrors serve every byte, the p2preg mirror makes exactly one origin fetch for
concurrent cold clients (Distribution's proxy more than one: its first client alone causes a
second GET to store the blob), and the "stored" row finds each mirror's copy on its disk.
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


def test_mirror_benchmark_measures_both_mirrors(tmp_path: Path) -> None:
    require_tool("docker-registry", "curl")
    results_path = tmp_path / "mirror.json"
    argv = [
        sys.executable, "-m", "benchmarks.mirror", "--blob-mib", "16", "--runs", "1",
        "--layers", "2", "--layer-mib", "2", "--fanin-clients", "4", "--fanin-mib", "4",
        "--results", str(results_path),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(results_path.read_text())["results"]
    blob = results["cold_blob"]
    for target in ("p2preg", "distribution"):
        assert blob[target]["MiB_per_s"] > 0
        assert blob[target]["stored_s"] > 0
        assert blob[target]["cpu_s_until_stored"] >= 0
    fan_in = results["fan_in"]
    assert fan_in["p2preg"]["origin_blob_gets"] == 1
    assert fan_in["p2preg"]["complete_bodies"] == 4
    assert fan_in["distribution"]["complete_bodies"] == 4
    assert fan_in["distribution"]["origin_blob_gets"] > 1
    assert "blob stored and verified in the mirror" in done.stdout
