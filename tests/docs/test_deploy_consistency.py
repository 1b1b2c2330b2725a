"""deploy/ and docs/ name each thing once, and every flag deploy/ passes exists.

One node per host: namespace ``p2preg``, headless Service ``p2preg-peers`` (DNS
``p2preg-peers.p2preg.svc.cluster.local``), Secret ``p2preg-cluster-key``. The manifest, the TOML
example and the docs must agree, and a flag in the manifest or the systemd unit must be one
``p2preg serve`` knows (a renamed option fails here, not on the operator's cluster).
"""

from __future__ import annotations

import argparse
import re

from p2preg.cli import build_parser
from tests.docs.markdown import DOC_FILES, ROOT

NAMESPACE = "p2preg"
PEERS_SERVICE = "p2preg-peers"
PEERS_DNS = f"{PEERS_SERVICE}.{NAMESPACE}.svc.cluster.local"
KEY_SECRET = "p2preg-cluster-key"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def serve_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for p in sub.choices.values() for a in p._actions for s in a.option_strings}


def test_every_flag_in_the_manifests_and_units_exists() -> None:
    known = serve_flags()
    unknown = []
    for path in [*MANIFESTS, *UNITS]:
        # The node's command line: container args ("- --flag=…") and ExecStart= lines.
        lines = [line for line in path.read_text().splitlines()
                 if re.match(r"\s*- --|ExecStart=", line)]
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", "\n".join(lines)):
            if flag not in known:
                unknown.append(f"{path.relative_to(ROOT)}: {flag}")
    assert unknown == []


def test_one_name_for_the_peers_service_and_the_key_secret() -> None:
    for path in MANIFESTS:
        text = path.read_text()
        if "kind: DaemonSet" not in text:
            continue
        join_dns = re.findall(r"--join-dns[= ](\S+)", text)
        assert join_dns == [PEERS_DNS], path.name
        assert re.search(rf"name: {PEERS_SERVICE}\b", text), path.name
        assert re.search(rf"secretName: {KEY_SECRET}\b", text), path.name
    toml = (ROOT / "deploy" / "p2preg.toml").read_text()
    assert re.findall(r'join_dns = "([^"]+)"', toml) == [PEERS_DNS]
    wrong = []
    for path in DOC_FILES:
        text = path.read_text()
        for name in re.findall(r"\b(p2preg-[a-z-]+)\.[a-z-]+\.svc\.cluster\.local", text):
            if name != PEERS_SERVICE:
                wrong.append(f"{path.name}: {name}")
        for name in re.findall(r"name: (p2preg-[a-z-]+), namespace", text):
            if name != PEERS_SERVICE:
                wrong.append(f"{path.name}: Service {name}")
    assert wrong == []
