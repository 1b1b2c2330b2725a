"""``benchmarks/serve.py`` runs end to end on a tiny blob and writes complete results.

Specification: the benchmark starts both registries, pushes (monolithic and chunked), verifies and
GETs the blob, and writes a JSON file with a positive median for each registry and a ratio for
every measurement. A small size keeps this a smoke test (seconds), not a measurement.
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


def test_serve_benchmark_runs_and_reports_every_measurement(tmp_path: Path) -> None:
    require_tool("docker-registry", "curl")
    results_path = tmp_path / "serve.json"
    argv = [
        sys.executable, "-m", "benchmarks.serve", "--blob-mib", "8", "--chunk-mib", "3",
        "--repeats", "1", "--clients", "1", "2", "--results", str(results_path),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(results_path.read_text())
    assert results["blob_bytes"] == 8 * 1024 * 1024
    assert set(results["results"]) == {"push_monolithic", "push_chunked", "get_1", "get_2"}
    for row in results["results"].values():
        assert row["p2preg"]["median_MiB_per_s"] > 0
        assert row["distribution"]["median_MiB_per_s"] > 0
        assert row["ratio_p2preg_over_distribution"] > 0
    assert "| hot blob GET, 1 client |" in done.stdout
