"""``deploy/helm/p2preg`` and the manifest generated from it.

Specification:
- ``helm lint --strict`` passes for the default values and for ``data/values-full.yaml`` (every
  optional part on);
- every object ``helm template`` renders, for both, validates with ``kubernetes-validate
  --strict`` against the oldest (1.25) and newest (1.37) Kubernetes schemas supported; the two
  Prometheus Operator objects (no schema there) are checked by hand and ``promtool``;
- the node's container args are flags ``p2preg serve`` accepts and values it loads (parsed by the
  real CLI), except flags another branch is adding (``PENDING_FLAGS``, each named with its owner);
- the containerd init container's command, run for real, writes ``hosts.toml`` files with the
  local node first and the upstream kept as the fallback;
- ``deploy/kubernetes/p2preg.yaml`` is what ``generate.sh`` renders now, and the chart's copy of
  the alert rules is ``deploy/prometheus/p2preg-alerts.yml``;
- ``metrics.expose`` makes the node itself serve ``/metrics`` on the node's IP
  (``--metrics-listen``, no sidecar): run with the chart's own args, a real node answers
  ``/metrics`` there and nothing else, while ``/v2`` stays on loopback.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool
from tests.support.daemons import free_port
from tests.support.node import REPO_ROOT, http_request, running_node

CHART = REPO_ROOT / "deploy" / "helm" / "p2preg"
FULL_VALUES = Path(__file__).parent / "data" / "values-full.yaml"
HELM = str(REPO_ROOT / ".venv" / "bin" / "helm")
KUBE_VERSIONS = ("1.25.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
#: Flags the chart uses that another branch is adding to ``p2preg serve`` (flag: who adds it);
#: empty since --peer-listen landed (issue 10).
PENDING_FLAGS: dict[str, str] = {}
#: Values the kubelet substitutes for $(VAR) in args (parsing only; nothing is contacted).
DOWNWARD = {"HOST_IP": "192.0.2.10", "NODE_NAME": "node-a"}
VALUE_SETS = {"default": [], "full": ["-f", str(FULL_VALUES)]}


def _helm(*args: str) -> str:
    done = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if not Path(HELM).exists():
        require_tool("helm-in-venv (deploy/dev-setup.sh)")


def render(values: list[str]) -> list[dict[str, Any]]:
    text = _helm("template", "p2preg", str(CHART), "--namespace", "p2preg", *values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    return ds


def _container(ds: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    spec = ds["spec"]["template"]["spec"]
    (found,) = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return found


def _substitute(args: list[str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: DOWNWARD[m.group(1)], a) for a in args]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict(values: list[str]) -> None:
    out = _helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_validates_strictly(values: list[str], kube: str) -> None:
    import kubernetes_validate

    objects = render(values)
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "Service"} <= kinds
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, kube, strict=True)
    # The validator is strict: an unknown field in the DaemonSet is an error.
    bad = copy.deepcopy(_daemonset(objects))
    bad["spec"]["template"]["spec"]["containers"][0]["hostNetwork"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kube, strict=True)


def test_full_values_render_every_optional_part() -> None:
    objects = render(VALUE_SETS["full"])
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["DaemonSet", "Namespace", "PrometheusRule", "Service",
                     "ServiceMonitor"]  # existingSecret: no Secret rendered
    ds = _daemonset(objects)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "p2preg-critical"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert spec["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    node = _container(ds, "p2preg")
    assert node["image"].endswith("@sha256:" + "0" * 63 + "1")
    assert node["resources"]["limits"]["memory"] == "2Gi"
    args = node["args"]
    assert "--cache-max-bytes=53687091200" in args and "--zone=eu-west-1a" in args
    assert "--join-dns=p2preg-peers.p2preg.svc.k8s.example" in args
    assert "--upstream=ghcr.io=https://ghcr.io" in args
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "my-cluster-key"
    assert volumes["docker-config"]["secret"]["secretName"] == "upstream-creds"
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["metadata"]["name"] == "p2preg-peers"
    assert service["spec"]["clusterIP"] == "None"
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] in port_names
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_default_values_keep_v2_on_loopback_and_create_the_key_secret() -> None:
    objects = render([])
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "p2preg-cluster-key"
    assert "cluster.keys" in secret["data"]
    args = _container(_daemonset(objects), "p2preg")["args"]
    assert "--listen=127.0.0.1:5000" in args
    assert "--advertise=$(HOST_IP):5001" in args and "--node-name=$(NODE_NAME)" in args


def test_prometheus_rule_is_the_alert_file_and_promtool_accepts_it(tmp_path: Path) -> None:
    require_tool("promtool")
    (rule,) = [o for o in render(VALUE_SETS["full"]) if o["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "p2preg-alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_copy_of_the_alert_rules_is_current() -> None:
    assert (CHART / "files" / "p2preg-alerts.yml").read_bytes() == (
        REPO_ROOT / "deploy" / "prometheus" / "p2preg-alerts.yml").read_bytes()


def _serve_flags() -> set[str]:
    done = subprocess.run([sys.executable, "-m", "p2preg", "serve", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(re.findall(r"(--[a-z0-9-]+)", done.stdout))


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_node_args_are_flags_p2preg_serve_accepts(values: list[str]) -> None:
    from p2preg.cli import build_parser
    from p2preg.config import load_config

    args = _substitute(_container(_daemonset(render(values)), "p2preg")["args"])
    assert args[0] == "serve"
    known = _serve_flags()
    used = {a.split("=", 1)[0] for a in args[1:]}
    unknown = used - known
    nowhere = sorted(unknown - set(PENDING_FLAGS))
    assert not nowhere, f"flags no branch provides: {nowhere}"
    parsed = build_parser().parse_args(
        [a for a in args if a.split("=", 1)[0] not in unknown])
    config = load_config(parsed)
    assert config.mode == "mirror" and config.data_dir == "/var/lib/p2preg"
    assert config.cluster_key_file == "/etc/p2preg/keys/cluster.keys"


def test_containerd_init_writes_hosts_toml_with_the_upstream_as_fallback(tmp_path: Path) -> None:
    init = _container(_daemonset(render(VALUE_SETS["full"])), "containerd-config", init=True)
    args = [a for a in init["args"] if not a.startswith("--target=")]
    assert args[:3] == ["mirror-config", "containerd", "--write"]
    certs = tmp_path / "certs.d"
    done = subprocess.run([sys.executable, "-m", "p2preg", *args, f"--target={certs}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.relative_to(certs).as_posix() for p in certs.rglob("hosts.toml"))
    assert written == ["docker.io/hosts.toml", "ghcr.io/hosts.toml",
                       "registry.internal:5000/hosts.toml"]
    hub = (certs / "docker.io" / "hosts.toml").read_text()
    assert 'server = "https://registry-1.docker.io"' in hub  # the fallback
    assert '[host."http://127.0.0.1:5100"]' in hub
    assert 'capabilities = ["pull", "resolve"]' in hub


def test_static_manifest_is_generated_from_the_chart() -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "kubernetes" / "generate.sh"),
                           "--check"], env={"HELM": HELM, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, "deploy/kubernetes/p2preg.yaml is stale: run generate.sh"
    objects = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "kubernetes" /
                                              "p2preg.yaml").read_text()) if d]
    assert {o["kind"] for o in objects} == {"Namespace", "Service", "DaemonSet"}
    assert all(o["metadata"].get("namespace", "p2preg") == "p2preg" for o in objects)


def _metrics_listen(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--metrics-listen=")]


def test_exposed_metrics_are_the_nodes_own_listener_on_the_node_ip() -> None:
    objects = render(VALUE_SETS["full"])
    spec = _daemonset(objects)["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["p2preg"]  # no sidecar
    node = _container(_daemonset(objects), "p2preg")
    assert _metrics_listen(node["args"]) == ["--metrics-listen=$(HOST_IP):9800"]
    ports = {p["name"]: p for p in node["ports"]}
    assert ports["metrics"] == {"name": "metrics", "containerPort": 9800, "hostPort": 9800,
                                "protocol": "TCP"}
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert {"name": "metrics", "port": 9800, "protocol": "TCP"} in service["spec"]["ports"]
    assert {v["name"] for v in spec["volumes"]} == {
        "data", "tmp", "keys", "containerd-certs", "docker-config"}
    # Off by default: nothing listens beyond loopback but the peer and gossip ports.
    default = _container(_daemonset(render([])), "p2preg")
    assert _metrics_listen(default["args"]) == []
    assert "metrics" not in {p["name"] for p in default["ports"]}


def test_the_charts_metrics_listener_serves_a_real_nodes_metrics_and_nothing_else() -> None:
    node_args = _container(_daemonset(render(VALUE_SETS["full"])), "p2preg")["args"]
    (flag,) = _metrics_listen(node_args)
    port = free_port()
    host = "127.0.0.3"  # stands in for $(HOST_IP): an address apart from the loopback --listen
    arg = flag.replace("$(HOST_IP)", host).replace(":9800", f":{port}")
    with running_node(extra_args=[arg]) as node:
        (listening,) = [e for e in node.events() if e.get("event") == "listening"]
        assert listening["metrics_url"] == f"http://{host}:{port}"
        got = http_request("GET", f"http://{host}:{port}/metrics")
        assert got.status == 200 and b"p2preg_http_requests_total" in got.body
        assert got.headers["content-type"].startswith("text/plain")
        for path in ("/v2/", "/healthz", "/ui"):
            assert http_request("GET", f"http://{host}:{port}{path}").status == 404, path
        assert http_request("DELETE", f"http://{host}:{port}/metrics").status == 405
        assert http_request("GET", f"{node.url}/v2/").status == 200
        assert node.url.startswith("http://127.0.0.1:")
