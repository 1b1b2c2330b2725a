"""``deploy/grafana/p2preg.json``: the Grafana dashboard is current, valid, backed by real metrics.

Specification:
- the file is what ``deploy/grafana/generate.py`` writes now;
- it loads into Grafana's dashboard model (grafana-foundation-sdk, pinned) and back with no key
  dropped (an unknown or misspelt key would be), and it has the rows the issue asks for;
- every panel query, with Grafana's variables replaced, parses with ``promtool`` (wrapped as a
  recording rule);
- every ``p2preg_*`` metric a query names is exported by a real mirror node that pulled an image
  through itself from a Distribution origin, with gossip on, and every label a query selects or
  groups by is a label of that metric (target labels ``job``/``instance`` aside).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.support.daemons import distribution, skopeo_copy
from tests.support.images import build_image
from tests.support.node import REPO_ROOT, parse_metrics, running_node

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "p2preg.json"
GENERATE = REPO_ROOT / "deploy" / "grafana" / "generate.py"
TARGET_LABELS = {"job", "instance"}
_METRIC = re.compile(r"\b(p2preg_[a-z0-9_]+)")
_SELECTOR = re.compile(r"(p2preg_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def _load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _concrete(expr: str) -> str:
    return (expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
            .replace("$job", ".*"))


def test_dashboard_is_generated() -> None:
    done = subprocess.run([sys.executable, str(GENERATE), "--check"], timeout=60, check=False)
    assert done.returncode == 0, "deploy/grafana/p2preg.json is stale: run generate.py"


def _dropped(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [path]
        return [d for k in a for d in ([f"{path}/{k}"] if k not in b else
                                       _dropped(a[k], b[k], f"{path}/{k}"))]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _dropped(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def _round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    result: dict[str, Any] = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    return result


def test_grafana_dashboard_model_keeps_every_key() -> None:
    dash = _load()
    assert _dropped(dash, _round_trip(dash)) == []
    bad = json.loads(json.dumps(dash))
    bad["panels"][1]["titel"] = "typo"
    bad["templating"]["list"][1]["definition"] = "not in the schema"
    assert sorted(_dropped(bad, _round_trip(bad))) == ["/panels[1]/titel",
                                                       "/templating/list[1]/definition"]


def test_dashboard_has_the_rows_and_variables_asked_for() -> None:
    dash = _load()
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Fills", "Peers", "Gossip", "Disk", "HTTP"]
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "job", "instance"]
    for expr in _exprs(dash):
        for _metric, selector in _SELECTOR.findall(expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    require_tool("promtool")
    exprs = _exprs(_load())
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"p2preg:dashboard:q{i}", "expr": _concrete(e)} for i, e in enumerate(exprs)
    ]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


@pytest.fixture(scope="module")
def node_metrics() -> tuple[set[str], dict[str, set[str]]]:
    """Metric families and sample labels of a gossiping mirror node that pulled an image."""
    require_tool("skopeo", "docker-registry")
    with tempfile.TemporaryDirectory(prefix="p2p-dash-") as tmp:
        image = build_image(Path(tmp) / "img", payload_layer_sizes=(64 * 1024,), seed=5)
        keys = Path(tmp) / "cluster.keys"
        keys.write_text("0f" * 32 + "\n")
        with distribution() as origin:
            skopeo_copy(image.oci_ref, f"docker://{origin.host}/library/app:v1")
            args = ["--gossip-listen", "127.0.0.1:0", "--cluster-key-file", str(keys),
                    "--upstream", f"docker.io=http://{origin.host}"]
            with running_node(mode="mirror", extra_args=args) as node:
                skopeo_copy(f"docker://{node.host}/library/app:v1", f"oci:{tmp}/back:v1")
                node.request("GET", "/p2p/v1/blobs/sha256:" + "ab" * 32)  # unsigned: refused
                text = node.metrics_text()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    labels: dict[str, set[str]] = {}
    for sample in parse_metrics(text):
        names.add(sample.name)
        labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_every_metric_and_label_is_exported_by_a_real_node(
    node_metrics: tuple[set[str], dict[str, set[str]]],
) -> None:
    names, labels = node_metrics
    exprs = _exprs(_load())
    named = {m for e in exprs for m in _METRIC.findall(e)}
    assert named <= names, sorted(named - names)
    checked: set[str] = set()
    for expr in exprs:
        used_by = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
        for metric, selector in _SELECTOR.findall(expr):
            used = (set(_MATCHER.findall(selector)) | used_by) - TARGET_LABELS - {"le", ""}
            if metric not in labels:
                continue  # a labelled family with no sample yet: its name was checked above
            assert used <= labels[metric], (metric, sorted(used - labels[metric]), expr)
            checked.add(metric)
    # The traffic, fills, cache, upstream, gossip, store and HTTP families had samples.
    assert len(checked) >= 12, sorted(checked)
