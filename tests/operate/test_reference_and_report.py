"""Image names as users write them, and the fan-out report's numbers."""

from __future__ import annotations

import io

import pytest

from p2preg.operate.client import Progress
from p2preg.operate.reference import ImageRefError, parse_image
from p2preg.operate.report import MIB, percentile, summarize_cluster_pull, time_stats

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


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _pull(state: str, done: int) -> dict[str, object]:
    return {"nodes": [{"name": "n0", "state": state, "error": "",
                       "progress": {"bytes_done": done, "bytes_total": 4 * MIB,
                                    "seconds": 0.5, "bytes_by_source": {"peer": done}}}]}


def test_progress_redraws_bars_on_a_terminal_and_prints_changes_otherwise() -> None:
    tty = Tty()
    progress = Progress(tty)
    progress.show(_pull("pulling", MIB))
    progress.show(_pull("done", 4 * MIB))
    first, second = tty.getvalue().split("\x1b[1F")  # the second draw moves up one line
    assert "[######" in first and " 25.0%" in first and "pulling" in first
    assert "[" + "#" * 24 + "]" in second and "100.0%" in second

    plain = io.StringIO()
    progress = Progress(plain)
    for pull in (_pull("pulling", MIB), _pull("pulling", MIB), _pull("done", 4 * MIB)):
        progress.show(pull)
    assert plain.getvalue().splitlines() == ["n0: pulling 25%",
                                             "n0: done in 0.5 s (peer 4.0 MiB)"]
