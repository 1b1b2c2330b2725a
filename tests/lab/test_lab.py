"""The lab itself: it builds, caps its links as asked, cleans up after itself, and removes what a
harness killed by SIGKILL left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from benchmarks.lab import PREFIX, STATE_DIR, link_rate_bytes_s
from tests.lab.conftest import lab_or_skip
from tests.support.netns import existing_netns

pytestmark = pytest.mark.netns

REPO_ROOT = Path(__file__).resolve().parents[2]
KiB = 1024


def _ours(token: str) -> list[str]:
    return sorted(n for n in existing_netns() if n.startswith(f"{PREFIX}{token}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, the killed harness, is gone too).
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_links_are_capped_both_ways_at_the_asked_rates() -> None:
    # Host uploads 8 Mbit/s, downloads 12; the origin uploads 24 and downloads 4. Each transfer
    # is limited by exactly one of those caps, so each cap is seen on its own.
    lab = lab_or_skip(2, host_up_mbit=8, host_down_mbit=12, origin_up_mbit=24,
                      origin_down_mbit=4)  # fmt: skip
    with lab:
        cases = [("h0", "h1", 8.0, 1024 * KiB),  # host upload
                 ("o", "h1", 12.0, 1536 * KiB),  # host download (the origin could send 24)
                 ("h0", "o", 4.0, 512 * KiB)]  # origin download  # fmt: skip
        for sender, receiver, cap_mbit, nbytes in cases:
            seconds = lab.measure_transfer(sender, receiver, nbytes)
            ratio = nbytes / seconds / link_rate_bytes_s(cap_mbit)
            assert 0.7 <= ratio <= 1.1, (sender, receiver, cap_mbit, seconds, ratio)


def test_the_lab_removes_its_namespaces_processes_and_state_on_exit() -> None:
    lab = lab_or_skip(2)
    with lab:
        token = lab.token
        assert len(_ours(token)) == 4  # bridge, origin, two hosts
        lab.start_nodes("p2preg-solo")
        pids = [p.pid for p in lab._nodes if p is not None]
        assert (STATE_DIR / f"{token}.json").exists()
    assert _ours(token) == []
    assert not (STATE_DIR / f"{token}.json").exists()
    assert not [pid for pid in pids if _alive(pid)]


HARNESS = textwrap.dedent("""
    import json, sys, time
    from benchmarks.lab import Lab
    lab = Lab(1)
    lab.open()
    lab.start_nodes("p2preg-solo")
    print(json.dumps({"token": lab.token, "node": lab._nodes[0].pid,
                      "origin": lab._origin_proc.pid}), flush=True)
    time.sleep(120)
""")


def _harness() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A harness process with a 1-host lab and its node up; what it started."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    harness = subprocess.Popen([sys.executable, "-c", HARNESS], stdout=subprocess.PIPE,
                               text=True, cwd=REPO_ROOT, env=env)  # fmt: skip
    assert harness.stdout is not None
    line = harness.stdout.readline()
    if not line:
        harness.kill()
        harness.wait(10)
        raise AssertionError("the harness did not start its lab")
    return harness, json.loads(line)


def test_a_harness_stopped_by_sigterm_cleans_up_its_lab() -> None:
    lab_or_skip(1)
    harness, started = _harness()
    assert len(_ours(started["token"])) == 3
    os.kill(harness.pid, signal.SIGTERM)
    assert harness.wait(30) != 0
    assert _ours(started["token"]) == []
    assert not _alive(started["node"]) and not _alive(started["origin"])
    assert not (STATE_DIR / f"{started['token']}.json").exists()


def test_a_lab_killed_by_sigkill_is_swept_by_the_next_one() -> None:
    lab = lab_or_skip(1)
    harness, started = _harness()
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait(10)
    stale = started["token"]
    assert len(_ours(stale)) == 3
    assert _alive(started["node"]) and _alive(started["origin"])

    with lab:  # opening sweeps labs whose harness is gone
        assert _ours(stale) == []
        assert not _alive(started["node"]) and not _alive(started["origin"])
        assert not (STATE_DIR / f"{stale}.json").exists()
        assert len(_ours(lab.token)) == 3
    assert _ours(lab.token) == []
