"""How a node carries this package: ``Operate`` builds the pull jobs, the coordinator, the status
sources and their routes from the parts the node already has.

Owns ``Operate`` (``local_routes`` for the ``/v2`` listener: ``/ui``, the status JSON and, with
gossip, the operator routes; ``peer_routes`` and ``uploads.middleware`` for wherever ``/p2p`` is
served; ``close``) and ``data_plane_counters`` (the node's counters a pull job diffs). The node
calls it in a few lines; nothing here changes how the node serves ``/v2`` or ``/p2p``.

Must not import the node or the CLI.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from p2preg.clock import Clock
from p2preg.operate.coordinator import Coordinator
from p2preg.operate.operator import operator_routes
from p2preg.operate.peer import pull_routes
from p2preg.operate.pull import CounterReader, PullJobs
from p2preg.operate.status import StatusSources, status_routes
from p2preg.operate.uploads import UploadTracker
from p2preg.p2p.auth import RequestSigner, RequestVerifier
from p2preg.registry.content import ContentSource
from p2preg.storage.blobs import BlobStore
from p2preg.storage.metadata import MetadataStore


def data_plane_counters(registry: CollectorRegistry) -> CounterReader:
    def read() -> dict[str, float]:
        def get(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        return {"uploaded": get("p2preg_p2p_sent_bytes_total"),
                "from_peer": get("p2preg_fill_received_bytes_total", source="peer"),
                "from_upstream": get("p2preg_fill_received_bytes_total", source="upstream")}

    return read


class Operate:
    """This package's part of one node (see the module docstring)."""

    def __init__(self, *, mode: str, content: ContentSource, blobs: BlobStore,
                 meta: MetadataStore, metrics: CollectorRegistry, clock: Clock,
                 wall_clock: Clock, gossip: Any = None, keyring: Any = None,
                 fetcher: Callable[[], Any] = lambda: None, scheme: str = "http",
                 peer_ssl: Any = None, on_evict: Callable[[str], None] = lambda d: None,
                 node_name: str | None = None) -> None:
        name = gossip.node_name if gossip is not None else (
            node_name or socket.gethostname().split(".")[0])
        self.verifier = None if keyring is None else RequestVerifier(keyring, clock=wall_clock)
        self.pulls = PullJobs(content, blobs, wall_clock=wall_clock, clock=clock,
                              counters=data_plane_counters(metrics), on_evict=on_evict)
        self.coordinator: Coordinator | None = None
        if gossip is not None and keyring is not None:
            self.coordinator = Coordinator(gossip, RequestSigner(keyring, clock=wall_clock),
                                           scheme=scheme, clock=clock, wall_clock=wall_clock,
                                           ssl=peer_ssl)
        self.uploads = UploadTracker(clock)
        self.status = StatusSources(node_name=name, mode=mode, blobs=blobs, meta=meta,
                                    metrics=metrics, wall_clock=wall_clock, gossip=gossip,
                                    fetcher=fetcher, pulls=self.pulls, uploads=self.uploads)

    def local_routes(self) -> list[web.RouteTableDef]:
        return [status_routes(self.status), operator_routes(self.coordinator, self.verifier)]

    def peer_routes(self) -> web.RouteTableDef:
        return pull_routes(self.pulls, self.verifier)

    async def close(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()
        await self.pulls.close()
