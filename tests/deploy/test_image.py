"""``deploy/image/build.sh``: the container image is reproducible, small, and works as a node.

Specification:
- two builds of the same tree give the same manifest digest and the same archive bytes, and the
  compressed image is under 60 MB;
- the image carries the OCI labels (source, version, revision), runs ``p2preg`` as its
  entrypoint as a non-root user, and declares /var/lib/p2preg as its data directory;
- run by podman on the host network with a read-only root filesystem, as a mirror of a real
  Distribution origin on 127.0.0.1: skopeo pulls an image through it byte-identical, the origin
  and the node's own metrics show the node fetched and served it, ``/healthz`` answers, the
  process runs as uid 10001, writing to / fails, and SIGTERM (``podman stop``) ends it with
  status 0 after its "stopped" log line;
- the image pushed to a ``p2preg serve --mode registry`` node comes back under the same digest;
- every program the Helm chart's containers name as ``command`` exists in the image and runs
  (``chown`` for the data directory).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients._layouts import oci_layout_contents, oci_layout_top_digest
from tests.conftest import require_tool
from tests.deploy.conftest import IMAGE_TESTS_TIMEOUT_S, ImageBuild
from tests.support.daemons import (
    Podman,
    distribution,
    free_port,
    podman,
    run_command,
    skopeo_copy,
    wait_for_http,
)
from tests.support.images import build_image
from tests.support.node import http_request, parse_metrics, running_node

pytestmark = [pytest.mark.clients, pytest.mark.timeout(IMAGE_TESTS_TIMEOUT_S)]

MAX_COMPRESSED_BYTES = 60_000_000
IMAGE_UID = 10001
_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
"""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_two_builds_give_the_same_digest_and_bytes(
    image_builds: tuple[ImageBuild, ImageBuild],
) -> None:
    first, second = image_builds
    assert first.digest.startswith("sha256:") and len(first.digest) == 71
    assert first.digest == second.digest, (first.summary, second.summary)
    assert first.summary == second.summary
    assert _sha256_file(first.archive) == _sha256_file(second.archive)
    assert first.packages.read_text() == second.packages.read_text()
    assert "python3.11 " in first.packages.read_text()


def test_image_is_small(image_builds: tuple[ImageBuild, ImageBuild]) -> None:
    compressed = int(str(image_builds[1].summary["compressed_bytes"]))
    assert 10_000_000 < compressed < MAX_COMPRESSED_BYTES, compressed


def test_config_names_entrypoint_user_labels_and_data_dir(
    image_builds: tuple[ImageBuild, ImageBuild], tmp_path: Path,
) -> None:
    build = image_builds[1]
    layout = tmp_path / "layout"
    skopeo_copy(build.archive_ref, f"oci:{layout}:x")
    manifest_digest = oci_layout_top_digest(layout, "x")
    assert manifest_digest == build.digest
    blobs = oci_layout_contents(layout)
    manifest = json.loads(blobs[manifest_digest])
    config = json.loads(blobs[manifest["config"]["digest"]])["config"]
    assert config["Entrypoint"] == ["/usr/local/bin/p2preg"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert "/var/lib/p2preg" in config["Volumes"]
    assert "P2PREG_DATA_DIR=/var/lib/p2preg" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == build.version
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert len(labels["org.opencontainers.image.revision"].removesuffix("-dirty")) == 40


@pytest.fixture
def image_podman(image_builds: tuple[ImageBuild, ImageBuild]) -> Iterator[tuple[Podman, str]]:
    """Podman with its own storage holding the built image (loaded as build.sh loads it)."""
    require_tool("podman")
    build = image_builds[1]
    with podman() as pm:
        (pm.root / "containers.conf").write_text(_CONTAINERS_CONF.format(base=pm.root))
        (pm.root / "tmp").mkdir()
        ref = f"localhost/p2preg:{build.version}"
        run_command(["skopeo", "copy", "-q", build.archive_ref, f"containers-storage:{ref}"],
                    env=pm.env, timeout_s=120)
        try:
            yield pm, ref
        finally:
            pm.podman("rm", "-af", "-t", "5", check=False)
            pm.podman("system", "reset", "-f", check=False)


def test_image_mirrors_an_origin_read_only_as_non_root_and_stops_on_sigterm(
    image_podman: tuple[Podman, str], image_builds: tuple[ImageBuild, ImageBuild],
    tmp_path: Path,
) -> None:
    pm, ref = image_podman
    assert pm.podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip() == (
        image_builds[1].digest)
    busybox = build_image(tmp_path / "src", payload_layer_sizes=(256 * 1024,), seed=41)
    with distribution() as origin:
        skopeo_copy(busybox.oci_ref, f"docker://{origin.host}/library/busybox:latest")
        port = free_port()
        pm.podman(
            "run", "-d", "--name", "p2preg-image-test", "--network", "host", "--read-only",
            ref, "serve", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"docker.io=http://{origin.host}",
        )
        node = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{node}/healthz", timeout_s=60)
        except Exception:
            print(pm.podman("logs", "p2preg-image-test", check=False).stdout)
            raise
        assert http_request("GET", f"{node}/healthz").status == 200

        back = tmp_path / "back"
        skopeo_copy(f"docker://127.0.0.1:{port}/library/busybox:latest", f"oci:{back}:bb")
        assert oci_layout_top_digest(back, "bb") == busybox.top.digest
        pulled = oci_layout_contents(back)
        assert all(pulled[d] == busybox.read(d) for d in busybox.blob_digests)
        # The origin sent every blob to the node, and the node served them from upstream.
        assert all(origin.blob_gets(d) >= 1 for d in busybox.blob_digests)
        metrics = parse_metrics(http_request("GET", f"{node}/metrics").body.decode())
        served = {s.labels.get("source"): s.value for s in metrics
                  if s.name == "p2preg_blob_bytes_served_total"}
        assert served.get("upstream", 0) >= 256 * 1024, served
        stored = [s.value for s in metrics if s.name == "p2preg_store_blobs"]
        assert stored and stored[0] >= len(busybox.blob_digests)  # /var/lib/p2preg is writable

        pid = int(pm.podman("inspect", "--format", "{{.State.Pid}}",
                            "p2preg-image-test").stdout.strip())
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(IMAGE_UID)] * 4, status
        assert pm.podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}",
                         "p2preg-image-test").stdout.strip() == "true"
        touch = pm.podman("exec", "p2preg-image-test", "/bin/sh", "-c", "echo x > /usr/x",
                          check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch

        pm.podman("stop", "-t", "30", "p2preg-image-test", timeout_s=60)
        state = pm.podman("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}",
                          "p2preg-image-test").stdout.split()
        assert state == ["0", "exited"], state
        logs = pm.podman("logs", "p2preg-image-test").stdout + pm.podman(
            "logs", "p2preg-image-test").stderr
        events = [json.loads(line).get("event") for line in logs.splitlines()
                  if line.startswith("{")]
        assert "listening" in events and events[-1] == "stopped", events[-5:]


def test_image_pushed_to_a_registry_node_comes_back_identical(
    image_builds: tuple[ImageBuild, ImageBuild], tmp_path: Path,
) -> None:
    build = image_builds[1]
    with running_node(tmp_path / "data", mode="registry") as node:
        dest = f"docker://{node.host}/p2preg/p2preg:{build.version}"
        skopeo_copy(build.archive_ref, dest)
        back = tmp_path / "back"
        skopeo_copy(dest, f"oci:{back}:{build.version}")
    assert oci_layout_top_digest(back, build.version) == build.digest
    original = tmp_path / "original"
    skopeo_copy(build.archive_ref, f"oci:{original}:{build.version}")
    assert oci_layout_contents(back) == oci_layout_contents(original)


def test_the_charts_commands_run_in_the_image(image_podman: tuple[Podman, str]) -> None:
    from tests.deploy.test_chart import VALUE_SETS, render

    pm, ref = image_podman
    commands = {c["command"][0] for obj in render(VALUE_SETS["full"]) if obj["kind"] == "DaemonSet"
                for key in ("initContainers", "containers")
                for c in obj["spec"]["template"]["spec"][key] if "command" in c}
    assert commands == {"/bin/chown"}
    probes = {"/bin/chown": ["--version"]}
    for program in sorted(commands):
        done = pm.podman("run", "--rm", "--network", "host", "--read-only", "--entrypoint",
                         program, ref, *probes[program], check=False)
        assert done.returncode == 0, (program, done.stdout, done.stderr)
