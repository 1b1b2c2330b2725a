"""DataDirLock: a second process (or a second lock in this one) cannot take a store in use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2preg.storage.layout import StoreLayout
from p2preg.storage.lock import DataDirLock, DataDirLocked


def test_a_second_lock_on_the_same_store_is_refused(layout: StoreLayout) -> None:
    layout.ensure()
    with DataDirLock(layout) as first:
        assert first.held
        with pytest.raises(DataDirLocked, match="one p2preg node per data directory"):
            DataDirLock(layout).acquire()
    with DataDirLock(layout) as again:
        assert again.held


def test_another_process_sees_the_lock_and_its_holder(layout: StoreLayout) -> None:
    layout.ensure()
    probe = (
        "import sys; from pathlib import Path; from p2preg.storage.layout import StoreLayout;"
        "from p2preg.storage.lock import DataDirLock, DataDirLocked\n"
        "try:\n DataDirLock(StoreLayout(Path(sys.argv[1]))).acquire()\n"
        "except DataDirLocked as e:\n print(e); sys.exit(3)\n"
    )
    with DataDirLock(layout):
        result = subprocess.run(
            [sys.executable, "-c", probe, str(layout.root)], capture_output=True, text=True
        )
    assert result.returncode == 3
    assert "pid" in result.stdout
