"""The cluster-wide pull: one node asks chosen members to pull an image and follows them.

Owns: ``ClusterPull`` (one cluster pull and its per-node ``NodeRun``; the JSON the operator API
answers) and ``Coordinator`` (starts cluster pulls, follows every node, keeps the last few).

Rules, in order:

1. Targets: every member ``alive`` or ``suspect`` (this node included), or the names asked for;
   an unknown name refuses the whole request (``UnknownNodes``, naming the known ones); a named
   member that is ``dead`` or ``left`` fails at once with that reason.
2. Each target gets one signed ``POST /p2p/v1/pulls`` at its advertised peer address (the same
   id everywhere, so a retry is harmless), then a signed ``GET /p2p/v1/pulls/<id>`` every
   ``poll_s`` until it is ``done`` or ``failed``.
3. A node is given up on, never waited on forever: when gossip says it is ``dead`` or ``left``;
   when it has not answered for ``unreachable_s``; when the whole pull passed ``timeout_s``.
   Its run is then ``failed`` with the reason and the last progress seen.
4. When every run is over, the finished nodes are asked once more (every ``poll_s``, for at most
   ``settle_s``) until the bytes they uploaded to peers add up to the bytes they received from
   peers: a node that finished first may still be sending to the others, and its upload counter
   moves when those answers end. Only then is the cluster pull ``finished``.

Must not import the registry handlers or the mirror; membership comes in as a ``MembersSource``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from p2preg.clock import Clock
from p2preg.gossip.http import MembersSource
from p2preg.operate.peer import PULLS_PATH
from p2preg.operate.reference import ImageRef
from p2preg.operate.signing import SignedClientError, signed_json
from p2preg.p2p.auth import RequestSigner

LIVE = ("alive", "suspect")
GONE = ("dead", "left")
MAX_KEPT = 32


class UnknownNodes(ValueError):
    """Names asked for that are not members."""


@dataclass
class NodeRun:
    name: str
    url: str
    state: str = "starting"
    error: str = ""
    progress: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "state": self.state, "error": self.error,
                "progress": self.progress}


@dataclass
class ClusterPull:
    id: str
    image: str
    platforms: tuple[str, ...]
    at: float | None
    evict_first: bool
    created_at: float
    nodes: dict[str, NodeRun] = field(default_factory=dict)
    settled: bool = False

    @property
    def finished(self) -> bool:
        return self.settled and all(r.state in ("done", "failed") for r in self.nodes.values())

    def uploads_balanced(self) -> bool:
        """Bytes the finished nodes uploaded to peers cover what they received from peers."""
        counters = [r.progress.get("counters") or {} for r in self.nodes.values()
                    if r.state == "done"]
        return (sum(int(c.get("uploaded", 0)) for c in counters)
                >= sum(int(c.get("from_peer", 0)) for c in counters))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "platforms": list(self.platforms),
                "at": self.at, "evict_first": self.evict_first, "created_at": self.created_at,
                "state": "finished" if self.finished else "running",
                "failed": sorted(n for n, r in self.nodes.items() if r.state == "failed"),
                "nodes": [r.to_json() for _, r in sorted(self.nodes.items())]}


class Coordinator:
    """Starts and follows cluster pulls from this node (see the module docstring)."""

    def __init__(self, members: MembersSource, signer: RequestSigner, *, scheme: str,
                 clock: Clock, wall_clock: Clock, rng: random.Random | None = None,
                 poll_s: float = 0.25, unreachable_s: float = 5.0, timeout_s: float = 3600.0,
                 settle_s: float = 3.0, ssl: Any = None) -> None:
        self._members = members
        self._signer = signer
        self._scheme = scheme
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.SystemRandom()
        self.poll_s = poll_s
        self.unreachable_s = unreachable_s
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self._ssl = ssl
        self.pulls: dict[str, ClusterPull] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def _status(self) -> dict[str, tuple[str, str]]:
        return {m.name: (m.status.value, m.http_addr) for m in self._members.members()}

    def start(self, image: ImageRef, *, nodes: list[str] | None = None,
              platforms: tuple[str, ...] = (), at: float | None = None,
              evict_first: bool = False) -> ClusterPull:
        members = self._status()
        if nodes:
            unknown = sorted(set(nodes) - set(members))
            if unknown:
                raise UnknownNodes(f"not members: {', '.join(unknown)} (members: "
                                   f"{', '.join(sorted(members))})")
            chosen = sorted(set(nodes))
        else:
            chosen = sorted(n for n, (status, _) in members.items() if status in LIVE)
        pull = ClusterPull(id=f"{self._rng.getrandbits(64):016x}", image=str(image),
                           platforms=platforms, at=at, evict_first=evict_first,
                           created_at=self._wall.now())
        body = {"id": pull.id, "image": str(image), "repository": image.mirror_repository,
                "reference": image.reference, "platforms": list(platforms), "at": at,
                "evict_first": evict_first}
        runs = []
        for name in chosen:
            status, addr = members[name]
            run = pull.nodes[name] = NodeRun(name, f"{self._scheme}://{addr}")
            if status in GONE:
                run.state, run.error = "failed", f"{status} in gossip"
            else:
                runs.append(run)
        self._spawn(self._run(pull, runs, body))
        self.pulls[pull.id] = pull
        while len(self.pulls) > MAX_KEPT:
            del self.pulls[next(iter(self.pulls))]
        return pull

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, pull: ClusterPull, runs: list[NodeRun], body: dict[str, Any]) -> None:
        await asyncio.gather(*(self._follow(pull, run, body) for run in runs))
        deadline = self._clock.now() + self.settle_s
        while not pull.uploads_balanced() and self._clock.now() < deadline:
            await self._clock.sleep(self.poll_s)
            await asyncio.gather(*(self._refresh(pull, run) for run in runs
                                   if run.state == "done"))
        pull.settled = True

    async def _refresh(self, pull: ClusterPull, run: NodeRun) -> None:
        with contextlib.suppress(SignedClientError):  # else keep the last answer: it is over
            run.progress = await signed_json(
                self._client(), self._signer, "GET", run.url, f"{PULLS_PATH}/{pull.id}",
                sender=self._members.node_name, timeout_s=max(1.0, self.unreachable_s))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True))
        return self._session

    async def _follow(self, pull: ClusterPull, run: NodeRun, body: dict[str, Any]) -> None:
        started = last_answer = self._clock.now()
        sender = self._members.node_name
        path = PULLS_PATH
        method: str = "POST"
        payload: dict[str, Any] | None = body
        while True:
            try:
                answer = await signed_json(self._client(), self._signer, method, run.url, path,
                                           sender=sender, body=payload,
                                           timeout_s=max(1.0, self.unreachable_s))
                last_answer = self._clock.now()
                run.progress = answer
                run.state = str(answer.get("state", "starting"))
                if run.state == "failed":
                    run.error = str(answer.get("error", "failed"))
                if run.state in ("done", "failed"):
                    return
                method, payload, path = "GET", None, f"{PULLS_PATH}/{pull.id}"
            except SignedClientError as exc:
                if exc.status in (400, 401, 404, 503):  # refused: retrying will not help
                    run.state, run.error = "failed", f"refused: {exc.message}"
                    return
                run.error = f"no answer: {exc.message}"
            now = self._clock.now()
            status = self._status().get(run.name, ("gone", ""))[0]
            if status in GONE or status == "gone":
                run.state, run.error = "failed", f"node {status} in gossip ({run.error or 'ok'})"
                return
            if now - last_answer > self.unreachable_s:
                run.state = "failed"
                run.error = f"unreachable for {self.unreachable_s:g}s: {run.error}"
                return
            if now - started > self.timeout_s:
                run.state, run.error = "failed", f"not finished within {self.timeout_s:g}s"
                return
            await self._clock.sleep(self.poll_s)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
