"""Where a host's downlink under-runs in a simulated swarm: a lag trace of ``swarm.sim`` runs.

Owns: ``LagTrace`` (attach it to a ``SwarmSim``, then ``LagTrace.run``), ``HostTrace`` and
the cause names (``CAUSES``). Every ``interval_s`` of simulated time (at the first batch end
past it) it records, per host, the bytes received so far, the rates of its downlink and
uplink, and when the downlink runs below its capacity it names **why**, from the host's own
state and its flows:

- ``frontier``: every piece that exists yet (the owner's origin stream started it) is held or
  asked for: ``frontier/flows`` when every request runs (at the rate its sources give: the
  origin's pace, a relay chain, a shared uplink), ``frontier/answer`` when some request has no
  bytes yet (on its way, waiting at a relay for its first byte, long-polled at the owner).
- ``window``: pieces that exist are neither held nor asked for, but none is in the window
  (``window_pieces`` above the prefix): the prefix waits on a slow piece (head-of-line).
- ``slots``: such pieces are in the window but no request may be added: ``slots/upstream``
  (the host streams its own blob from the origin and this fill has ``upstream_busy_requests``
  out: scheduler rule 1), ``slots/answer`` (``max_requests`` out, some without bytes yet: on
  their way, queued at a relay for its first byte, long-polled at the owner) or
  ``slots/flows`` (``max_requests`` out, all running, held below the link rate by their
  senders' uplinks or by the flows they relay).
- ``source``: such pieces are in the window and a request slot is free, but the scheduler
  asks nobody. A peer is known or hinted to have one, but: ``source/owner``, the only one at
  ``per_peer`` is the digest's owner (our requests to it are mostly long-polls for pieces it
  has not yet); ``source/per_peer``, our requests to such a peer are at ``per_peer``;
  ``source/backoff``, it said busy or missing for that piece; ``source/failed``, it failed;
  ``source/usable``, none of those (the scheduler waits on a rule of its own: the probe
  interval, last resort). Or ``source/unknown``: nobody is known to have any of them.

A host with two fills (two layers) splits a snapshot's deficit over the fills that are not
at the frontier (over both when both are). The deficit of a snapshot is ``1 - rate /
capacity`` for the time to the next snapshot, so a host's causes add up to about the time its
downlink was idle: in a case with no slack (link rate = origin rate) its finish over the
ideal.

Read-only on the simulator (it walks its hosts, fills and flows; it changes nothing, so a
traced run is the same run). Must not import asyncio, sockets or time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2preg.swarm.sim import SchedulerDownloader, SimResult, SwarmSim, _Fill, _Host

CAUSES = ("frontier/flows", "frontier/answer", "window", "slots/upstream", "slots/answer",
          "slots/flows",
          "source/owner", "source/per_peer", "source/backoff", "source/failed", "source/usable",
          "source/unknown")
_FULL = 0.99
"""A downlink above this fraction of its capacity is running full."""


@dataclass(slots=True)
class HostTrace:
    """One host's samples: ``received[i]`` bytes and ``rate[i]`` B/s at ``LagTrace.times[i]``."""

    name: str
    owner_of: tuple[str, ...]
    received: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    cause: list[dict[str, float]] = field(default_factory=list)
    """Per sample: cause -> share of the deficit (the shares add up to ``1 - rate/cap``)."""
    up_rate: list[float] = field(default_factory=list)
    """Per sample: the rate of the host's uplink (its uploads to peers)."""
    idle_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0.0))
    """Cause -> seconds of downlink idle (deficit integrated over time)."""
    done_s: float | None = None


class LagTrace:
    """Samples ``sim`` every ``interval_s`` (module docstring)."""

    def __init__(self, sim: SwarmSim, interval_s: float = 0.01) -> None:
        self.sim = sim
        self.interval_s = interval_s
        self.times: list[float] = []
        self.frontier: list[float] = []
        """Bytes the origin had sent at each sample."""
        self.capacity = sim.topology.host_down_bps
        owned: dict[str, list[str]] = {}
        for digest, owner in sim.owners.items():
            owned.setdefault(owner, []).append(digest)
        self.hosts = {name: HostTrace(name, tuple(owned.get(name, ())))
                      for name in sim.hosts}
        self._next = 0.0
        sim.observers.append(self._observe)

    # -- sampling ------------------------------------------------------------------------------

    def run(self, until_s: float = 3600.0) -> SimResult:
        """Run the simulation, then take a last sample (the state at its end)."""
        result = self.sim.run(until_s)
        if not self.times or self.times[-1] < self.sim.now:
            self._next = self.sim.now
            self._observe(self.sim)
        return result

    def _observe(self, sim: SwarmSim) -> None:
        now = sim.now
        if now < self._next:
            return
        if self.times:
            dt = now - self.times[-1]
            for trace in self.hosts.values():
                for cause, share in trace.cause[-1].items():
                    trace.idle_s[cause] += share * dt
        self._next = now + self.interval_s
        self.times.append(now)
        self.frontier.append(sim.net.carried("origin"))
        up = dict.fromkeys(sim.hosts, 0.0)
        for host in sim.hosts.values():
            for fill in host.fills.values():
                for flight in fill.flights.values():
                    flow = flight.flow
                    if flow is not None and flow.active and isinstance(flow.tag, tuple):
                        up[flow.tag[4]] += flow.rate  # ("peer", digest, piece, asker, server, _)
        for name, host in sim.hosts.items():
            self.hosts[name].up_rate.append(up[name])
            self._sample(sim, host, self.hosts[name])

    def _sample(self, sim: SwarmSim, host: _Host, trace: HostTrace) -> None:
        received = sim.net.carried((host.name, "down"))
        rate = 0.0
        for fill in host.fills.values():
            rate += sum(f.flow.rate for f in fill.flights.values()
                        if f.flow is not None and f.flow.active)
            rate += sum(f.rate for f in fill.upstream.values() if f.active)
        trace.received.append(received)
        trace.rate.append(rate)
        if all(f.done_at is not None for f in host.fills.values()):
            if trace.done_s is None:
                trace.done_s = min(sim.now, max(f.done_at or 0.0 for f in host.fills.values()))
            trace.cause.append({})
            return
        deficit = max(0.0, 1.0 - rate / self.capacity)
        if rate >= _FULL * self.capacity:
            trace.cause.append({})
            return
        streaming = any(sim.owners[digest] == host.name and fill.done_at is None
                        for digest, fill in host.fills.items())
        causes = [c for fill in host.fills.values()
                  if (c := self._fill_cause(sim, fill, streaming)) is not None]
        behind = [c for c in causes if not c.startswith("frontier")] or causes
        # (causes is never empty: a host not done has a fill not done)
        out: dict[str, float] = {}
        for cause in behind:
            out[cause] = out.get(cause, 0.0) + deficit / len(behind)
        trace.cause.append(out)

    def _fill_cause(self, sim: SwarmSim, fill: _Fill, streaming: bool) -> str | None:
        """Why this fill does not take more of the downlink (None: it is done)."""
        d = fill.downloader
        if fill.done_at is not None:
            return None
        if not isinstance(d, SchedulerDownloader):
            return "frontier/flows"  # the owner's stream from the origin
        s = d.scheduler
        owner_fill = sim.hosts[sim.owners[fill.blob.digest]].fills[fill.blob.digest]
        exists = max(len(owner_fill.upstream), owner_fill.prefix)
        wanted = [p for p in s.missing() if p < exists and p not in fill.flights]
        if not wanted:
            waiting = any(f.flow is None or not f.flow.active for f in fill.flights.values())
            return "frontier/answer" if waiting else "frontier/flows"
        end = s.prefix + s.config.window_pieces
        window = [p for p in wanted if p < end]
        if not window:
            return "window"
        if streaming and len(fill.flights) >= s.config.upstream_busy_requests:
            return "slots/upstream"
        if len(fill.flights) >= s.config.max_requests:
            waiting = any(f.flow is None or not f.flow.active for f in fill.flights.values())
            return "slots/answer" if waiting else "slots/flows"
        per_piece = [s.source_states(p, sim.now) for p in window]
        states = {st for names in per_piece for st in names.values()}
        at_limit = {n for names in per_piece for n, st in names.items() if st == "per_peer"}
        if at_limit == {s.owner}:
            return "source/owner"
        for state in ("per_peer", "backoff", "failed", "usable"):
            if state in states:
                return f"source/{state}"
        return "source/unknown"

    # -- results -------------------------------------------------------------------------------

    def idle_total(self, name: str) -> float:
        """Seconds ``name``'s downlink was idle, by its causes."""
        return sum(self.hosts[name].idle_s.values())

    def up_busy(self, until_s: float | None = None) -> float:
        """The hosts' uplinks' mean utilisation up to ``until_s`` (default: the last sample)."""
        end = self.times[-1] if until_s is None else until_s
        busy = 0.0
        for i in range(len(self.times) - 1):
            if self.times[i] >= end:
                break
            dt = min(self.times[i + 1], end) - self.times[i]
            busy += sum(h.up_rate[i] for h in self.hosts.values()) * dt
        return busy / (end * len(self.hosts) * self.sim.topology.host_up_bps)

    def lag_s(self, name: str) -> list[float]:
        """Per sample: how far ``name`` trails the origin's frontier, in seconds at its link."""
        trace = self.hosts[name]
        return [(f - r) / self.capacity for f, r in zip(self.frontier, trace.received,
                                                         strict=True)]

    def idle_s(self, name: str) -> list[float]:
        """Per sample: the time ``name``'s downlink was idle so far (``t - received/cap``)."""
        trace = self.hosts[name]
        return [t - r / self.capacity for t, r in zip(self.times, trace.received, strict=True)]

    def causes_over_time(self, bin_s: float) -> tuple[list[float], dict[str, list[float]]]:
        """Bins of ``bin_s``: (bin starts, cause -> host-seconds of idle downlink per second of
        the bin, summed over the hosts that are not done)."""
        if not self.times:
            return [], {c: [] for c in CAUSES}
        bins = int(self.times[-1] / bin_s) + 1
        out = {c: [0.0] * bins for c in CAUSES}
        for i in range(len(self.times) - 1):
            dt = self.times[i + 1] - self.times[i]
            b = int(self.times[i] / bin_s)
            for trace in self.hosts.values():
                for cause, share in trace.cause[i].items():
                    out[cause][b] += share * dt / bin_s
        return [i * bin_s for i in range(bins)], out
