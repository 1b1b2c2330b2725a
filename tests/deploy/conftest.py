"""Fixtures for the deployment artefacts: the container image, built once per test session.

Owns: ``built_image`` (runs ``deploy/image/build.sh`` twice into a session directory, the second
time with the first build's download cache, so the reproducibility test compares two real builds
and the image tests reuse the second one) and ``ImageBuild`` (what one build produced).

Must not import p2preg: the artefacts are tested from the outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.support.node import REPO_ROOT

BUILD_SH = REPO_ROOT / "deploy" / "image" / "build.sh"
BUILD_TIMEOUT_S = 420.0
#: For the first test that uses the builds: two builds fit here even on a loaded machine.
IMAGE_TESTS_TIMEOUT_S = 2 * BUILD_TIMEOUT_S + 120


@dataclass(frozen=True)
class ImageBuild:
    """One run of build.sh: the digest it printed and the files it wrote."""

    digest: str
    archive: Path
    summary: dict[str, object]
    packages: Path
    version: str
    log: str

    @property
    def archive_ref(self) -> str:
        return f"oci-archive:{self.archive}:{self.version}"


def run_build(out: Path, cache: Path) -> ImageBuild:
    """``build.sh`` into ``out`` (no load into local storage), with ``cache`` for downloads."""
    env = {**os.environ, "IMAGE_BUILD_DIST": str(out), "IMAGE_BUILD_CACHE": str(cache),
           "IMAGE_BUILD_NO_LOAD": "1", "PYTHON": str(REPO_ROOT / ".venv" / "bin" / "python")}
    # Its own session: on a timeout (ours or pytest's) the whole build, mmdebstrap included,
    # gets SIGTERM by process group id (mmdebstrap then unmounts and removes its chroot).
    build = subprocess.Popen(["bash", str(BUILD_SH)], cwd=REPO_ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        stdout, stderr = build.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGTERM)
        build.communicate(timeout=60)
        raise
    assert build.returncode == 0, stdout[-3000:] + stderr[-6000:]
    digest = stdout.strip().splitlines()[-1]
    archives = sorted(out.glob("p2preg-*.oci.tar"))
    assert len(archives) == 1, archives
    version = archives[0].name.removeprefix("p2preg-").removesuffix(".oci.tar")
    summary = json.loads((out / f"p2preg-{version}.json").read_text())
    return ImageBuild(digest=digest, archive=archives[0], summary=summary,
                      packages=out / f"p2preg-{version}.packages", version=version,
                      log=stderr)


@pytest.fixture(scope="session")
def image_builds() -> Iterator[tuple[ImageBuild, ImageBuild]]:
    """Two builds of the working tree, the second reusing only the first one's downloads."""
    require_root()
    require_tool("mmdebstrap", "skopeo")
    with tempfile.TemporaryDirectory(prefix="p2p-image-") as tmp:
        base = Path(tmp)
        first = run_build(base / "one", base / "cache")
        second = run_build(base / "two", base / "cache")
        yield first, second
