"""Run ``p2preg serve`` once as an operator would and collect what it printed.

Owns: ``run_serve`` (a subprocess with ``--listen 127.0.0.1:0`` and a given data dir, this
checkout on ``PYTHONPATH``, ``P2PREG_CONFIG`` unset) for tests of start-up failures: a node that
starts by mistake is killed by the timeout. Must not import p2preg.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_serve(cwd: Path, argv: list[str], env: dict[str, str],
              data_dir: Path) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
    full_env.pop("P2PREG_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "p2preg", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(data_dir), *argv],
        capture_output=True, text=True, timeout=60, env=full_env, cwd=cwd,
    )
