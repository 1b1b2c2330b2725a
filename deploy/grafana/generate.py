"""Write ``deploy/grafana/p2preg.json``, the p2preg Grafana dashboard, from the panel list below.

Owns: the dashboard's panels and their PromQL. One row per concern (traffic, fills, peers,
gossip, disk, HTTP); ``$job`` picks the cluster (the scrape job), ``$instance`` one or more nodes,
so every panel works per cluster and per node. Every metric and label named here must be one a
real node exports (``tests/deploy/test_dashboard.py`` checks that against ``/metrics``, parses
every query with ``promtool`` and the JSON with Grafana's dashboard model).

``python deploy/grafana/generate.py`` rewrites the file; ``--check`` exits 1 if it is stale.
Standard library only; imports nothing from p2preg.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("p2preg.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(kind: str, title: str, desc: str, targets: list[tuple[str, str]], unit: str,
           *, stack: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {"fillOpacity": 20 if stack else 0}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    }
    if kind == "timeseries":
        panel["fieldConfig"]["defaults"]["custom"] = custom
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                       "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                              "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return panel


def _rows() -> list[tuple[str, list[dict[str, Any]]]]:
    served = f"p2preg_blob_bytes_served_total{{{SEL}}}"
    cache = f"p2preg_cache_requests_total{{{SEL}}}"
    return [
        ("Traffic", [
            _panel("timeseries", "Blob bytes served by source",
                   "Bytes of blob bodies written to clients, by where they came from: the local "
                   "store, a peer, or the upstream registry.",
                   [(f"sum by (source) (rate({served}[{RATE}]))", "{{source}}")],
                   "Bps", stack=True),
            _panel("stat", "Cache hit ratio",
                   "Mirror lookups answered from the local store.",
                   [(f'sum(rate(p2preg_cache_requests_total{{{SEL}, result="hit"}}[{RATE}])) / '
                     f"sum(rate({cache}[{RATE}]))", "hit ratio")],
                   "percentunit"),
            _panel("stat", "Bytes served from peers or the store",
                   "Share of blob bytes that did not come from the upstream.",
                   [(f'sum(rate(p2preg_blob_bytes_served_total{{{SEL}, source=~"local|peer"}}'
                     f"[{RATE}])) / sum(rate({served}[{RATE}]))", "local + peer")],
                   "percentunit"),
            _panel("timeseries", "Origin egress by node",
                   "Blob bytes this node's fills received from the upstream registry: what the "
                   "origin sent the cluster (one copy per blob is the goal).",
                   [(f'sum by (instance) (rate(p2preg_fill_received_bytes_total{{{SEL}, '
                     f'source="upstream"}}[{RATE}]))', "{{instance}}")],
                   "Bps", stack=True),
            _panel("timeseries", "Upstream requests",
                   "Requests to upstream registries by registry, kind and status.",
                   [(f"sum by (registry, kind, status) (rate(p2preg_upstream_requests_total"
                     f"{{{SEL}}}[{RATE}]))", "{{registry}} {{kind}} {{status}}")],
                   "reqps"),
        ]),
        ("Fills", [
            _panel("timeseries", "Blob fills by source and outcome",
                   "Blob fills (from a peer or the upstream) and how they ended.",
                   [(f"sum by (source, outcome) (rate(p2preg_blob_fills_total{{{SEL}}}"
                     f"[{RATE}]))", "{{source}} {{outcome}}")],
                   "ops"),
            _panel("timeseries", "Fills in progress",
                   "Blob fills running now, by node.",
                   [(f"sum by (instance) (p2preg_blob_fills_in_progress{{{SEL}}})",
                     "{{instance}}")],
                   "short"),
            _panel("timeseries", "Stale tags served",
                   "Tags answered from the last known digest while the upstream was down.",
                   [(f"sum by (source) (rate(p2preg_stale_tags_served_total{{{SEL}}}[{RATE}]))",
                     "{{source}}")],
                   "ops"),
        ]),
        ("Peers", [
            _panel("timeseries", "Peer bytes up / down by node",
                   "Up: blob bytes this node sent to peers. Down: blob bytes its fills "
                   "received from peers. Over the cluster the two sums match.",
                   [(f"sum by (instance) (rate(p2preg_p2p_sent_bytes_total{{{SEL}}}[{RATE}]))",
                     "up {{instance}}"),
                    (f'-sum by (instance) (rate(p2preg_fill_received_bytes_total{{{SEL}, '
                     f'source="peer"}}[{RATE}]))', "down {{instance}}")],
                   "Bps"),
            _panel("stat", "Fill bytes from peers",
                   "Share of the bytes the selected nodes' fills received that came from peers "
                   "rather than the upstream.",
                   [(f'sum(rate(p2preg_fill_received_bytes_total{{{SEL}, source="peer"}}'
                     f"[{RATE}])) / sum(rate(p2preg_fill_received_bytes_total{{{SEL}}}"
                     f"[{RATE}]))", "from peers")],
                   "percentunit"),
            _panel("timeseries", "Peer requests answered (upload side)",
                   "Requests this node's peer API answered for other nodes, by kind.",
                   [(f"sum by (kind) (rate(p2preg_p2p_served_total{{{SEL}}}[{RATE}]))",
                     "{{kind}}")],
                   "reqps"),
            _panel("timeseries", "Peer requests refused and peers penalised",
                   "Refused peer requests by reason (unsigned, bad signature, ...) and peers "
                   "penalised by cause (wrong bytes, errors).",
                   [(f"sum by (reason) (rate(p2preg_p2p_rejected_total{{{SEL}}}[{RATE}]))",
                     "refused {{reason}}"),
                    (f"sum by (cause) (rate(p2preg_p2p_penalties_total{{{SEL}}}[{RATE}]))",
                     "penalty {{cause}}")],
                   "ops"),
        ]),
        ("Gossip", [
            _panel("timeseries", "Members by status",
                   "Members as each node sees them (max over the selected nodes).",
                   [(f"max by (status) (p2preg_gossip_members{{{SEL}}})", "{{status}}")],
                   "short"),
            _panel("timeseries", "Local health (Lifeguard awareness)",
                   "0 is healthy, up to 7: a node that misses acks or keeps refuting suspicion.",
                   [(f"max by (instance) (p2preg_gossip_awareness_score{{{SEL}}})",
                     "{{instance}}")],
                   "short"),
            _panel("timeseries", "Probes, suspicions, deaths",
                   "Failed probes, suspicions started and refuted, members declared dead, two live "
                   "nodes seen with one name.",
                   [(f"sum(rate(p2preg_gossip_failed_probes_total{{{SEL}}}[{RATE}]))",
                     "failed probes"),
                    (f"sum(rate(p2preg_gossip_suspicions_total{{{SEL}}}[{RATE}]))",
                     "suspicions"),
                    (f"sum(rate(p2preg_gossip_suspicions_refuted_total{{{SEL}}}[{RATE}]))",
                     "refuted"),
                    (f"sum(rate(p2preg_gossip_member_deaths_total{{{SEL}}}[{RATE}]))",
                     "deaths"),
                    (f"sum(rate(p2preg_gossip_name_conflicts_total{{{SEL}}}[{RATE}]))",
                     "name conflicts")],
                   "ops"),
            _panel("timeseries", "Gossip traffic and drops",
                   "Gossip bytes by direction and dropped packets by reason.",
                   [(f"sum by (direction) (rate(p2preg_gossip_bytes_total{{{SEL}}}[{RATE}]))",
                     "bytes {{direction}}"),
                    (f"sum by (reason) (rate(p2preg_gossip_dropped_packets_total{{{SEL}}}"
                     f"[{RATE}]))", "dropped {{reason}}")],
                   "short"),
        ]),
        ("Disk", [
            _panel("timeseries", "Store size by node",
                   "Bytes of committed blobs in each node's store.",
                   [(f"sum by (instance) (p2preg_store_bytes{{{SEL}}})", "{{instance}}")],
                   "bytes"),
            _panel("timeseries", "Evictions",
                   "Bytes removed by cache eviction (--cache-max-bytes) and by garbage "
                   "collection.",
                   [(f"sum by (instance) (rate(p2preg_cache_evicted_bytes_total{{{SEL}}}"
                     f"[{RATE}]))", "evicted {{instance}}"),
                    (f"sum by (instance) (rate(p2preg_gc_freed_bytes_total{{{SEL}}}[{RATE}]))",
                     "gc {{instance}}")],
                   "Bps"),
            _panel("stat", "Blobs in the stores",
                   "Committed blobs, summed over the selected nodes.",
                   [(f"sum(p2preg_store_blobs{{{SEL}}})", "blobs")],
                   "short"),
        ]),
        ("HTTP", [
            _panel("timeseries", "Requests by route and status",
                   "Requests answered by the registry API.",
                   [(f"sum by (route, status) (rate(p2preg_http_requests_total{{{SEL}}}"
                     f"[{RATE}]))", "{{route}} {{status}}")],
                   "reqps"),
            _panel("timeseries", "Latency p50 / p99 by route",
                   "From arrival until the response was completely sent (blob transfers "
                   "included).",
                   [(f"histogram_quantile(0.5, sum by (le, route) (rate("
                     f"p2preg_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                     "p50 {{route}}"),
                    (f"histogram_quantile(0.99, sum by (le, route) (rate("
                     f"p2preg_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                     "p99 {{route}}")],
                   "s"),
            _panel("timeseries", "Server errors by node",
                   "5xx answers per node.",
                   [(f'sum by (instance) (rate(p2preg_http_requests_total{{{SEL}, '
                     f'status=~"5.."}}[{RATE}]))', "{{instance}}")],
                   "reqps"),
        ]),
    ]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2, "includeAll": True, "multi": True,
        "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1,
        "hide": 0, "skipUrlSync": False, "options": [],
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for title, row in _rows():
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        width = 12 if len(row) in (2, 4) else 8
        x = 0
        for panel in row:
            w = width
            if x + w > 24:
                x, y = 0, y + 8
            panel["id"] = next_id
            panel["gridPos"] = {"h": 8, "w": w, "x": x, "y": y}
            next_id += 1
            x += w
            panels.append(panel)
        y += 8
    return {
        "uid": "p2preg-overview",
        "title": "p2preg",
        "description": "p2preg nodes: where blob bytes come from, the upstream's load, peers, "
                       "gossip, disk and the HTTP API. Per cluster ($job) and per node "
                       "($instance). Generated by deploy/grafana/generate.py.",
        "tags": ["p2preg", "registry"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source",
             "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
             "multi": False, "options": [], "refresh": 1, "skipUrlSync": False},
            _variable("job", "Cluster (job)", "label_values(p2preg_http_requests_total, job)"),
            _variable("instance", "Node",
                      'label_values(p2preg_http_requests_total{job=~"$job"}, instance)'),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUT.exists() and OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT}")
