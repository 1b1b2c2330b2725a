"""Crash safety with a real ``kill -9``: whatever instant the writer dies at, recovery leaves a
store where every visible blob hashes to its name, every acknowledged commit is present and every
upload session is resumable at its recorded offset."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from p2preg.clock import WallClock
from p2preg.oci.digest import parse_digest
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4
DEADLINE_S = 30.0  # per round, only a bound for a hung child; rounds take well under 1 s


def run_child_until(
    root: Path, seed: int, commits_before_kill: int, extra_delay_s: float
) -> list[str]:
    """Start the writer child, SIGKILL it ``extra_delay_s`` after it reported that many commits.

    The delay moves the kill to a random instant inside the next write (this is choosing when to
    crash, not waiting for something). Returns the commits the child acknowledged.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_child", str(root), str(seed)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    committed: list[str] = []
    try:
        assert child.stdout is not None
        out = child.stdout.fileno()
        deadline = time.monotonic() + DEADLINE_S
        ready, pending = False, b""
        while not ready or len(committed) < commits_before_kill:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child made no progress"
            readable, _, _ = select.select([out], [], [], remaining)
            if not readable:
                continue
            data = os.read(out, 65536)
            assert data, f"the child died: {child.stderr.read() if child.stderr else b''!r}"
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line == b"ready":
                    ready = True
                elif line.startswith(b"committed "):
                    committed.append(line.split()[1].decode())
        time.sleep(extra_delay_s)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return committed


def check_store(root: Path, acknowledged: set[str]) -> None:
    layout = StoreLayout(root)
    blobs = BlobStore(layout)
    with MetadataStore(layout.db_path) as meta:
        uploads = UploadManager(layout, blobs, meta, WallClock())
        blobs.recover()
        uploads.recover()
        assert os.listdir(layout.tmp_dir) == []
        visible = set()
        for digest in blobs.digests():
            data = blobs.path(digest).read_bytes()
            assert hashlib.new(digest.algorithm, data).hexdigest() == digest.hex
            visible.add(str(digest))
        assert acknowledged <= visible, "an acknowledged commit was lost"
        for record in meta.uploads():
            size = layout.upload_data_path(record.uuid).stat().st_size
            assert size == record.offset, "a session is resumable exactly at its offset"
        assert {e.name for e in os.scandir(layout.uploads_dir)} == {r.uuid for r in meta.uploads()}
    db = sqlite3.connect(layout.db_path)
    linked = {row[0] for row in db.execute("SELECT digest FROM blob_links")}
    db.close()
    assert {str(parse_digest(d)) for d in linked} <= visible, "a link to a missing blob"


def test_sigkill_during_writes_never_exposes_a_partial_blob(tmp_path: Path) -> None:
    rng = random.Random(7)
    root = tmp_path / "store"
    acknowledged: set[str] = set()
    for round_ in range(ROUNDS):
        commits = run_child_until(root, round_, rng.randint(2, 10), rng.uniform(0.0, 0.06))
        acknowledged |= set(commits)
        check_store(root, acknowledged)
    assert len(acknowledged) >= ROUNDS * 2
