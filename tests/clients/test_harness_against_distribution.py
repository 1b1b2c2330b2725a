"""The client harness itself works, proven against the reference registry (Distribution 2.8).

Specification for ``tests/support/daemons.py``: Distribution starts on a free loopback port and
logs every request; skopeo pushes and pulls through it; in proxy mode it pulls from an origin,
which the origin's request log shows. If these fail, a p2preg client test failing next to them
is a harness problem, not a product one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.daemons import distribution, skopeo_copy, skopeo_inspect_raw
from tests.support.images import build_image

pytestmark = pytest.mark.clients


def test_skopeo_pushes_to_distribution_and_a_proxy_pulls_through_it(tmp_path: Path) -> None:
    require_tool("docker-registry", "skopeo")
    image = build_image(tmp_path / "src", seed=7)
    with distribution() as origin:
        skopeo_copy(image.oci_ref, f"docker://{origin.host}/library/busybox:latest")
        assert skopeo_inspect_raw(f"docker://{origin.host}/library/busybox:latest") == (
            image.read(image.top.digest)
        )
        with distribution(proxy_remote_url=origin.url) as proxy:
            skopeo_copy(f"docker://{proxy.host}/library/busybox:latest", f"oci:{tmp_path}/b:x")

            for digest in image.blob_digests:
                assert proxy.blob_gets(digest) == 1
                assert origin.blob_gets(digest) >= 1
    assert not origin.process.alive
    assert not proxy.process.alive
    assert not origin.root.exists()
