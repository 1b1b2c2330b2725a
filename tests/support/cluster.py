"""In-process clusters of real ``Node``s joined by gossip on 127.0.0.1, for tests.

Owns ``until`` (wait, bounded, for a condition fed by gossip over real sockets) and
``mirror_cluster`` (mirror-mode nodes with gossip and a cluster key, all joined through the
first one, yielded once every node sees every other alive; stopped in reverse order).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from p2preg.config import Config
from p2preg.node import Node

#: How long gossip on loopback may take to reach a condition before a test fails.
DEADLINE_S = 20.0
CLUSTER_KEY = "0f" * 32


async def until(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    """Wait (bounded) for a condition fed by gossip over real sockets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def mirror_cluster(
    tmp_path: Path, upstream_host: str, names: Sequence[str] = ("n0", "n1", "n2"),
    *, peer_listen: str | None = None,
) -> AsyncIterator[list[Node]]:
    """Mirror nodes named ``names`` (docker.io = ``http://upstream_host``), gossip and one
    cluster key, each with its data dir under ``tmp_path``; all alive to each other. With
    ``peer_listen`` (e.g. ``"127.0.0.2:0"``) each serves the peer API on its own listener."""
    key_file = tmp_path / "cluster.keys"
    key_file.write_text(CLUSTER_KEY + "\n")
    nodes: list[Node] = []
    try:
        for name in names:
            join: tuple[str, ...] = ()
            if nodes:
                host, port = nodes[0].gossip.bound_address[:2]
                join = (f"{host}:{port}",)
            node = Node(Config(
                mode="mirror", listen="127.0.0.1:0", data_dir=str(tmp_path / name),
                upstream=(f"docker.io=http://{upstream_host}",), gossip_listen="127.0.0.1:0",
                join=join, node_name=name, cluster_key_file=str(key_file),
                peer_listen=peer_listen,
            ))  # fmt: skip
            await node.start()
            nodes.append(node)
        await until(lambda: all(
            sum(m.status.value == "alive" for m in n.gossip.members()) == len(names)
            for n in nodes))  # fmt: skip
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()
