"""Image names as users write them, and the fan-out report's numbers."""

from __future__ import annotations

import pytest

from p2preg.operate.reference import ImageRefError, parse_image
from p2preg.operate.report import percentile, summarize_cluster_pull, time_stats

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "reference", "mirror_repo"), [
    ("busybox", "docker.io", "library/busybox", "latest", "library/busybox"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", "library/busybox"),
    ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest",
     "library/busybox"),
    ("index.docker.io/bitnami/redis:7", "docker.io", "bitnami/redis", "7", "bitnami/redis"),
    ("myorg/app:v1", "docker.io", "myorg/app", "v1", "myorg/app"),
    ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", "ghcr.io/org/app"),
    ("localhost:5000/app", "localhost:5000", "app", "latest", "localhost:5000/app"),
    (f"busybox:1.36@{DIGEST}", "docker.io", "library/busybox", DIGEST, "library/busybox"),
    (f"quay.io/a/b@{DIGEST}", "quay.io", "a/b", DIGEST, "quay.io/a/b"),
])
def test_names_resolve_as_docker_resolves_them(
    text: str, registry: str, repository: str, reference: str, mirror_repo: str
) -> None:
    ref = parse_image(text)
    assert (ref.registry, ref.repository, ref.reference) == (registry, repository, reference)
    assert ref.mirror_repository == mirror_repo


@pytest.mark.parametrize("text", ["", "Busybox", "busybox:", "a b", "busybox@sha256:12",
                                  "busybox:-bad"])
def test_bad_names_are_refused_saying_why(text: str) -> None:
    with pytest.raises(ImageRefError):
        parse_image(text)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert time_stats({"a": 1.0, "b": 3.0, "c": 2.0}) == {
        "all_done_s": 3.0, "host_p50_s": 2.0, "host_p99_s": 3.0, "host_max_s": 3.0}
    assert time_stats({})["all_done_s"] is None


def test_a_run_counts_times_from_the_common_start_and_keeps_failures_apart() -> None:
    def node(name: str, state: str, started: float, seconds: float, up: int,
             upstream: int) -> dict[str, object]:
        return {"name": name, "state": state, "error": "" if state == "done" else "boom",
                "progress": {"bytes_total": 100, "started_at": started, "seconds": seconds,
                             "bytes_by_source": {"local": 0, "peer": 100 - upstream,
                                                 "upstream": upstream},
                             "counters": {"uploaded": up, "from_upstream": upstream}}}

    run = summarize_cluster_pull({"at": 1000.0, "nodes": [
        node("a", "done", 1000.5, 1.0, 200, 100), node("b", "done", 1000.0, 2.0, 0, 0),
        node("c", "failed", 1000.0, 0.1, 0, 0)]})
    assert run["host_s"] == {"a": 1.5, "b": 2.0}
    assert run["all_done_s"] == 2.0 and run["ok_hosts"] == 2
    assert run["failed_hosts"] == {"c": "boom"}
    assert run["origin_egress_x_image"] == 1.0
    assert run["uploaded_bytes_per_host"] == {"a": 200, "b": 0, "c": 0}
