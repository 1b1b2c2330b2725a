"""``deploy/systemd/p2preg.service``: a hardened unit systemd accepts.

Specification:
- ``systemd-analyze verify`` accepts it with no message at all (an unknown or misspelt key would
  print one: checked on a copy with a typo), with ExecStart pointed at this checkout's p2preg;
- ``systemd-analyze security --offline`` rates its exposure at most 2.0 ("OK"): a dedicated user,
  no capabilities, read-only system, only /var/lib/p2preg writable, a system call filter;
- the sysusers.d file creates the user and group the unit runs as, home the state directory.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.node import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "systemd" / "p2preg.service"
SYSUSERS = REPO_ROOT / "deploy" / "systemd" / "p2preg.sysusers"
MAX_EXPOSURE = 2.0


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    require_tool("systemd-analyze")
    text = UNIT.read_text().replace("/opt/p2preg/venv/bin/p2preg",
                                    str(REPO_ROOT / ".venv" / "bin" / "p2preg"))
    path = tmp_path / "p2preg.service"
    path.write_text(text)
    return path


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_systemd_analyze_verify_has_nothing_to_say(unit: Path) -> None:
    done = _analyze("verify", str(unit))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    typo = unit.with_name("typo.service")
    typo.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Unknown key" in _analyze("verify", str(typo)).stderr


def test_exposure_is_low(unit: Path) -> None:
    done = _analyze("security", "--offline=yes", "--no-pager", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"Overall exposure level for p2preg\.service: ([0-9.]+)", done.stdout)
    assert match is not None, done.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout[-3000:]


def test_unit_runs_as_the_sysusers_user_with_its_state_directory() -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.M))
    assert settings["User"] == "p2preg" and settings["Group"] == "p2preg"
    assert settings["StateDirectory"] == "p2preg"
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    line = next(ln for ln in SYSUSERS.read_text().splitlines() if ln.startswith("u "))
    assert line.split()[1] == "p2preg" and "/var/lib/p2preg" in line
