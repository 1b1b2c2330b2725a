"""``deploy/prometheus/p2preg-alerts.yml``: the alerting rules operators install are valid,
fire as specified, and only name metrics (and labels) that a real node exports.

Specification:
- ``promtool check rules`` accepts the file;
- ``promtool test rules`` on ``data/alert_rules_test.yml``: each tested alert stays quiet before
  its condition holds for its ``for:`` and fires with the documented labels and text after;
- every ``p2preg_*`` name in the rules is a metric family a mirror node with gossip exports on
  ``/metrics`` (a renamed metric would leave an alert silent forever), and every label matched in
  a selector is a label of that metric where the node has samples of it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.node import REPO_ROOT, parse_metrics, running_node

RULES = REPO_ROOT / "deploy" / "prometheus" / "p2preg-alerts.yml"
RULE_TESTS = Path(__file__).parent / "data" / "alert_rules_test.yml"
_SELECTOR = re.compile(r"(p2preg_[a-z0-9_]+)\{([^}]*)\}")
_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")


def test_promtool_accepts_the_rules() -> None:
    require_tool("promtool")
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 13 rules found" in done.stdout


def test_alerts_fire_only_when_their_condition_held_long_enough() -> None:
    require_tool("promtool")
    done = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Metric names a mirror node with gossip exports, and label names seen per sample name."""
    with tempfile.TemporaryDirectory(prefix="p2p-alerts-") as tmp:
        keys = Path(tmp) / "cluster.keys"
        keys.write_text("0f" * 32 + "\n")
        args = ["--gossip-listen", "127.0.0.1:0", "--cluster-key-file", str(keys),
                "--upstream", "docker.io=http://127.0.0.1:9"]  # nothing listens: errors
        with running_node(mode="mirror", extra_args=args) as node:
            node.request("GET", "/v2/")
            node.request("GET", "/v2/library/app/manifests/latest")  # upstream unreachable
            node.request("GET", "/p2p/v1/blobs/sha256:" + "ab" * 32)  # unsigned: refused
            text = node.metrics_text()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    labels: dict[str, set[str]] = {}
    for sample in parse_metrics(text):
        labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_every_metric_and_label_the_rules_name_is_exported(
    exported: tuple[set[str], dict[str, set[str]]],
) -> None:
    names, labels = exported
    text = RULES.read_text()
    named = set(re.findall(r"\bp2preg_[a-z0-9_]+", text))
    assert len(named) >= 10
    assert named <= names, sorted(named - names)
    checked = 0
    for metric, selector in _SELECTOR.findall(text):
        if metric not in labels:  # a labelled family without samples yet: names only
            continue
        used = set(_LABEL.findall(selector))
        assert used <= labels[metric], (metric, sorted(used - labels[metric]))
        checked += 1
    assert checked >= 3  # http requests, upstream requests, peer rejections at least
