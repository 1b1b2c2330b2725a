"""The podman drop-in ``mirror-config`` writes is what containers/image reads: skopeo (the same
library as podman and CRI-O) pulls docker.io/library/busybox through the node with the host's own
``registries.conf`` untouched, its search list and short-name mode still in force.

containers/image reads drop-ins from ``$HOME/.config/containers/registries.conf.d`` besides the
system directory, so the test points ``HOME`` at a temp dir; the main file comes from
``CONTAINERS_REGISTRIES_CONF``. The node's access log must show every manifest and blob.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from p2preg.cli import main
from tests.conftest import require_root, require_tool
from tests.mirror.test_real_clients import (  # noqa: F401 (fixtures)
    REF,
    assert_served_everything,
    node,
    seeded_origin,
)
from tests.support.daemons import Distribution
from tests.support.images import BuiltImage
from tests.support.node import P2pregNode

pytestmark = pytest.mark.clients

HOST_REGISTRIES_CONF = '''unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "example.com"
location = "example.com"
'''


def test_skopeo_pulls_through_the_drop_in_and_the_host_file_stays(
    node: P2pregNode, seeded_origin: tuple[Distribution, BuiltImage], tmp_path: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_root()
    require_tool("skopeo")
    origin, image = seeded_origin
    home = tmp_path / "home"
    drop_ins = home / ".config" / "containers" / "registries.conf.d"
    host_conf = tmp_path / "registries.conf"
    host_conf.write_text(HOST_REGISTRIES_CONF)
    assert main(["mirror-config", "podman", "--write", "--mirror", node.host, "--target",
                 str(drop_ins), "--upstream", f"docker.io={origin.url}"]) == 0
    assert capsys.readouterr().out == f"wrote {drop_ins / '50-p2preg.conf'}\n"
    env = {**os.environ, "HOME": str(home), "CONTAINERS_REGISTRIES_CONF": str(host_conf)}
    done = subprocess.run(
        ["skopeo", "copy", "--retry-times", "0", f"docker://docker.io/{REF}",
         f"oci:{tmp_path / 'out'}:bb"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert_served_everything(node, image)
    assert host_conf.read_text() == HOST_REGISTRIES_CONF
