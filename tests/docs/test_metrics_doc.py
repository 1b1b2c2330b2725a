"""Every metric and label named in README.md and docs/ exists on a real node's ``/metrics``.

Two mirror nodes with gossip and a cluster key (one blob pulled from the upstream on the first,
from the first on the second) and a registry node: their scrapes together must expose every
``p2preg_*`` family the docs name, and every label the docs put in ``{…}`` after it. A metric
renamed in the code, or a family the docs invent, fails here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from tests.docs.markdown import DOC_FILES
from tests.p2p.harness import CountingUpstream, payload
from tests.support.cluster import mirror_cluster, until

# ``p2preg_…`` words in the docs that are not metrics.
NOT_METRICS = {
    "p2preg_guard": "the nftables table of the multicast guard (docs/discovery.md)",
    "p2preg_source": "the aiohttp request key observability reads (docs/observability.md)",
}
_MENTION = re.compile(r'\b(p2preg_[a-z0-9_]*)(\{(?:[^"}\n]|"[^"\n]*")*\})?')
_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? ', re.M)
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)


def documented() -> dict[str, set[str]]:
    """Metric name (or ``prefix_``) -> label names the docs use with it."""
    found: dict[str, set[str]] = {}
    for path in DOC_FILES:
        for name, labels in _MENTION.findall(path.read_text()):
            if name in NOT_METRICS:
                continue
            names = found.setdefault(name, set())
            if labels:
                unquoted = re.sub(r'"[^"]*"', '""', labels)
                names.update(re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~?|,|\})", unquoted))
    return found


async def scrape(http: aiohttp.ClientSession, node: Node) -> str:
    async with http.get(f"{node.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


def label_names(node: Node) -> dict[str, set[str]]:
    """Label names of the node's labelled metric families, sampled or not (the scrape shows a
    family's labels only once a child exists: a rejection reason nobody hit yet)."""
    names: dict[str, set[str]] = {}
    registry = node.metrics.registry
    for collector, exposed_names in registry._collector_to_names.items():
        labels = set(getattr(collector, "_labelnames", ()))
        for name in exposed_names:
            names.setdefault(name, set()).update(labels)
    return names


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    server = await CountingUpstream().start()
    yield server
    await server.stop()


async def test_every_documented_metric_and_label_is_exposed(
    tmp_path: Path, upstream: CountingUpstream
) -> None:
    data, _ = payload(64 * 1024, seed=5)
    digest = upstream.add(data)
    texts: list[str] = []
    declared: dict[str, set[str]] = {}
    registry = Node(Config(mode="registry", listen="127.0.0.1:0",
                           data_dir=str(tmp_path / "registry")))
    await registry.start()
    try:
        async with mirror_cluster(tmp_path, upstream.host, names=("n0", "n1")) as (n0, n1), \
                aiohttp.ClientSession() as http:
            for node in (n0, n1):
                if node is n1:
                    await until(lambda: any(m.name == "n0" for m in n1.gossip.holders(digest)))
                async with http.get(f"{node.url}/v2/library/app/blobs/{digest}") as response:
                    assert response.status == 200 and await response.read() == data
            # An unsigned peer request: refused and counted by reason.
            async with http.get(f"{n0.url}/p2p/v1/blobs/{digest}") as response:
                assert response.status in (401, 403)
            for node in (n0, n1, registry):
                texts.append(await scrape(http, node))
                declared.update(label_names(node))
    finally:
        await registry.stop()
    exposed: dict[str, set[str]] = {}
    for text in texts:
        for name, _kind in _TYPE.findall(text):
            exposed.setdefault(name, set())
        for name, labels in _SAMPLE.findall(text):
            exposed.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    for name, labels in declared.items():  # labelled families with no sample yet
        exposed.setdefault(name, set()).update(labels)
    families = dict(exposed)
    for name, labels in exposed.items():  # histogram/counter families by their base name too
        for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
            if name.endswith(suffix):
                families.setdefault(name.removesuffix(suffix), set()).update(labels - {"le"})
    missing, bad_labels = [], []
    for name, labels in sorted(documented().items()):
        if name.endswith("_"):  # "p2preg_gossip_*": a prefix
            if not any(f.startswith(name) for f in families):
                missing.append(name + "*")
            continue
        if name not in families:
            missing.append(name)
            continue
        unknown = labels - families[name] - {"le"}
        if unknown:
            bad_labels.append(f"{name}{{{','.join(sorted(unknown))}}}")
    assert missing == [], f"named in the docs, not on /metrics: {missing}"
    assert bad_labels == [], "labels named in the docs that the metric does not have"


def test_every_documented_label_value_is_one_the_code_uses() -> None:
    """``name{label="a|b"}``: each value is a string the code writes (a value the docs invent,
    or one the code renamed, fails; ``=~`` regular expressions are left alone)."""
    import ast

    import p2preg

    constants = {node.value for source in Path(str(p2preg.__file__)).parent.rglob("*.py")
                 for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    unknown = []
    for path in DOC_FILES:
        for name, labels in _MENTION.findall(path.read_text()):
            for label, values in re.findall(r'([a-z_]+)="([^"]*)"', labels):
                for value in values.split("|"):
                    if not re.fullmatch(r"[a-z][a-z_]*", value):
                        continue  # a status code or a route: not an enumerated name
                    if value not in constants:
                        unknown.append(f"{path.name}: {name}{{{label}=\"{value}\"}}")
    assert unknown == []
