"""The node's Prometheus metrics: one ``CollectorRegistry`` per node, never the global one.

Owns: ``RegistryMetrics`` (every metric family of the registry HTTP surface, the mirror's upstream
and cache counters, the store gauges read through callbacks the node provides, and the storage
maintenance counters, eviction and garbage collection, read at scrape time from a
``MaintenanceStats``, and the gossip layer's families ``p2preg_gossip_*``, read at scrape time from
the plain dict a callable returns, ``GossipService.stats`` on a node with gossip) and
``exposition`` (render the registry for a scrape, content negotiated on ``Accept``).

Labels are bounded by construction: ``route`` is a route pattern (or ``"other"``), ``method`` is
folded to the HTTP methods a registry answers, ``source`` to ``local|upstream|peer|other``,
``status`` to a number or ``"error"``. Callers never pass user input as a label value. Gossip
labels are fixed sets (``status``, ``direction``, stream ``reason``); drop ``reason`` values come
from the gossip core's fixed drop-reason enum and are still checked here (short lowercase words,
at most ``MAX_DROP_REASONS``; anything else counts as ``"other"``). Never a member name.

Must not import aiohttp or any other p2preg module: this is pure bookkeeping.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: The values ``p2preg_blob_bytes_served_total{source}`` may carry; anything else is ``"other"``.
BLOB_SOURCES = frozenset({"local", "upstream", "peer"})

#: The values ``p2preg_fill_received_bytes_total{source}`` may carry; anything else is ``"other"``.
FILL_SOURCES = ("peer", "upstream")

#: Methods kept as label values; anything else is counted as ``"OTHER"``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Latency buckets in seconds: fast manifest hits up to multi-minute blob transfers.
DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

StoreReading = Callable[[], int]
GossipReading = Callable[[], Mapping[str, Any]]
"""Returns the gossip counters as a plain dict (the keys ``GossipService.stats`` documents)."""


def method_label(method: str) -> str:
    """``method`` as a bounded label value."""
    upper = method.upper()
    return upper if upper in _METHODS else "OTHER"


def source_label(source: str | None) -> str:
    """A blob source as a bounded label value."""
    return source if source in BLOB_SOURCES else "other"


def status_label(status: int | str) -> str:
    """An HTTP status (or ``"error"`` for a transport failure) as a bounded label value."""
    if isinstance(status, int) and 100 <= status <= 599:
        return str(status)
    return "error"


class _StoreCollector(Collector):
    """Reads the store size through the node's callbacks at scrape time."""

    def __init__(self) -> None:
        self.bytes_reading: StoreReading | None = None
        self.blobs_reading: StoreReading | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._gauge(
            "p2preg_store_bytes", "Bytes of committed blobs in the local store.", self.bytes_reading
        )
        yield from self._gauge(
            "p2preg_store_blobs", "Committed blobs in the local store.", self.blobs_reading
        )

    @staticmethod
    def _gauge(name: str, documentation: str, reading: StoreReading | None) -> Iterator[Metric]:
        if reading is None:
            return
        try:
            value = reading()
        except Exception:  # a failing callback must never break a scrape
            log.exception("store metric callback %s failed", name)
            return
        yield GaugeMetricFamily(name, documentation, value=float(value))


class MaintenanceStats(Protocol):
    """What the storage maintenance task counts (``storage.maintenance.Maintenance`` has these).

    Read at scrape time: plain attributes, no I/O.
    """

    @property
    def evicted_blobs_total(self) -> int: ...
    @property
    def evicted_bytes_total(self) -> int: ...
    @property
    def gc_runs_total(self) -> int: ...
    @property
    def gc_failed_runs_total(self) -> int: ...
    @property
    def gc_deleted_blobs_total(self) -> int: ...
    @property
    def gc_freed_bytes_total(self) -> int: ...
    @property
    def gc_links_removed_total(self) -> int: ...
    @property
    def gc_last_duration_s(self) -> float | None: ...
    @property
    def gc_last_run_at(self) -> float | None: ...


#: (name without ``_total``, help, attribute of ``MaintenanceStats``) of each exported counter.
_MAINTENANCE_COUNTERS = (
    ("p2preg_cache_evicted_blobs", "Blobs deleted by cache eviction (mirror quota).",
     "evicted_blobs_total"),
    ("p2preg_cache_evicted_bytes", "Bytes freed by cache eviction (mirror quota).",
     "evicted_bytes_total"),
    ("p2preg_gc_runs", "Garbage collection passes completed (registry mode).", "gc_runs_total"),
    ("p2preg_gc_failed_runs", "Garbage collection passes that failed (see the log).",
     "gc_failed_runs_total"),
    ("p2preg_gc_deleted_blobs", "Blobs deleted by garbage collection.", "gc_deleted_blobs_total"),
    ("p2preg_gc_freed_bytes", "Bytes freed by garbage collection.", "gc_freed_bytes_total"),
    ("p2preg_gc_links_removed", "Dead repository blob links removed by garbage collection.",
     "gc_links_removed_total"),
)  # fmt: skip


class _MaintenanceCollector(Collector):
    """Exports the maintenance counters at scrape time (nothing until a source is set)."""

    def __init__(self) -> None:
        self.source: MaintenanceStats | None = None

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        for name, documentation, attribute in _MAINTENANCE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=float(getattr(source, attribute)))
        duration = source.gc_last_duration_s
        if duration is not None:
            yield GaugeMetricFamily(
                "p2preg_gc_last_duration_seconds",
                "How long the last garbage collection pass took.", value=duration,
            )
        started = source.gc_last_run_at
        if started is not None:
            yield GaugeMetricFamily(
                "p2preg_gc_last_run_timestamp_seconds",
                "When the last garbage collection pass started (Unix time).", value=started,
            )


#: (name without ``_total``, help, key of the gossip stats dict, ``.`` for a nested key).
_GOSSIP_COUNTERS = (
    ("p2preg_gossip_probes", "Direct probes (pings) this node started.", "probes"),
    ("p2preg_gossip_indirect_probes", "Indirect probe requests sent to helpers.",
     "indirect_probes"),
    ("p2preg_gossip_failed_probes",
     "Probes that got no ack, directly or indirectly (the target became suspect).",
     "failed_probes"),
    ("p2preg_gossip_push_pulls", "Push-pull anti-entropy exchanges this node started.",
     "push_pulls"),
    ("p2preg_gossip_member_joins", "Members that became known or came back from dead/left.",
     "joins"),
    ("p2preg_gossip_suspicions", "Members this node started to suspect.", "suspicions"),
    ("p2preg_gossip_suspicions_refuted",
     "Suspected members that proved alive (refuted) before their timeout.",
     "suspicions_refuted"),
    ("p2preg_gossip_member_deaths", "Members declared dead here (failed; not a graceful leave).",
     "deaths"),
    ("p2preg_gossip_member_leaves", "Members seen leaving gracefully.", "leaves"),
    ("p2preg_gossip_refutations",
     "Times this node refuted a suspicion or death claim about itself.", "refutations"),
    ("p2preg_gossip_name_conflicts",
     "Alive claims of this node's name by another live node (two nodes share a --node-name).",
     "name_conflicts"),
    ("p2preg_gossip_seeds_joined", "Seed addresses from discovery this node joined.",
     "seeds_joined"),
    ("p2preg_gossip_send_errors", "UDP sends that failed (including ICMP errors reported back).",
     "driver.send_errors"),
    ("p2preg_gossip_internal_errors",
     "Unexpected errors inside the gossip layer (a bug: see the log).", "driver.core_errors"),
    ("p2preg_gossip_tombstones_collected",
     "Catalog tombstones (dropped digests) collected after the grace, on any node's state.",
     "tombstones_collected"),
    ("p2preg_gossip_full_resyncs_sent",
     "Push-pulls that sent a node's whole catalog state to a peer behind a collected tombstone.",
     "full_resyncs_sent"),
    ("p2preg_gossip_full_resyncs_applied",
     "Whole catalog states of a node applied here (this node had missed collected tombstones).",
     "full_resyncs_applied"),
)  # fmt: skip

#: The SWIM statuses ``p2preg_gossip_members{status}`` always exports.
GOSSIP_MEMBER_STATUSES = ("alive", "suspect", "dead", "left")
#: At most this many distinct drop reasons are exported; more fold into ``"other"``.
MAX_DROP_REASONS = 16
_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _stat(stats: Mapping[str, Any], key: str) -> float | None:
    """The number at ``key`` (``a.b`` for nested dicts), or None when absent or not a number."""
    value: Any = stats
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _drop_reasons(drops: Any) -> dict[str, float]:
    """Drop counts by bounded reason label (see the module docstring)."""
    out: dict[str, float] = {}
    if not isinstance(drops, Mapping):
        return out
    for reason, count in drops.items():
        if isinstance(count, bool) or not isinstance(count, int | float):
            continue
        label = reason if isinstance(reason, str) and _REASON_RE.fullmatch(reason) else "other"
        if label not in out and label != "other" and len(out) >= MAX_DROP_REASONS - 1:
            label = "other"
        out[label] = out.get(label, 0.0) + float(count)
    return out


class _GossipCollector(Collector):
    """Exports the gossip layer's counters at scrape time (nothing until a reading is set)."""

    def __init__(self) -> None:
        self.reading: GossipReading | None = None

    def collect(self) -> Iterator[Metric]:
        reading = self.reading
        if reading is None:
            return
        try:
            stats = reading()
        except Exception:  # a failing callback must never break a scrape
            log.exception("gossip metrics callback failed")
            return
        yield from self._members(stats)
        yield from self._traffic(stats)
        for name, documentation, key in _GOSSIP_COUNTERS:
            value = _stat(stats, key)
            if value is not None:
                yield CounterMetricFamily(name, documentation, value=value)
        yield from self._streams(stats)
        for name, documentation, key in (
            ("p2preg_gossip_awareness_score",
             "Lifeguard local health score: 0 is healthy; higher stretches this node's probe "
             "timeouts (it missed acks or nacks, or had to refute suspicions).",
             "awareness_score"),
            ("p2preg_gossip_catalog_entries",
             "Distinct digests some known node holds or is fetching.", "catalog_entries"),
            ("p2preg_gossip_catalog_records",
             "Catalog records held for all nodes, tombstones included (the catalog's memory).",
             "catalog_records"),
        ):  # fmt: skip
            value = _stat(stats, key)
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)

    @staticmethod
    def _members(stats: Mapping[str, Any]) -> Iterator[Metric]:
        members = stats.get("members")
        if not isinstance(members, Mapping):
            return
        family = GaugeMetricFamily(
            "p2preg_gossip_members",
            "Cluster members by SWIM status as this node sees them, itself included.",
            labels=["status"],
        )
        for status in GOSSIP_MEMBER_STATUSES:
            family.add_metric([status], _stat(members, status) or 0.0)
        yield family

    @staticmethod
    def _traffic(stats: Mapping[str, Any]) -> Iterator[Metric]:
        for name, documentation, unit in (
            ("p2preg_gossip_packets", "Gossip UDP packets, by direction.", "packets"),
            ("p2preg_gossip_bytes", "Gossip UDP bytes (MAC included), by direction.", "bytes"),
        ):
            family = CounterMetricFamily(name, documentation, labels=["direction"])
            found = False
            for direction in ("sent", "received"):
                value = _stat(stats, f"{unit}_{direction}")
                if value is not None:
                    family.add_metric([direction], value)
                    found = True
            if found:
                yield family
        if "drops" in stats:
            drops = CounterMetricFamily(
                "p2preg_gossip_dropped_packets",
                "Gossip packets and push-pull frames dropped unprocessed, by reason.",
                labels=["reason"],
            )
            for reason, count in sorted(_drop_reasons(stats["drops"]).items()):
                drops.add_metric([reason], count)
            yield drops

    @staticmethod
    def _streams(stats: Mapping[str, Any]) -> Iterator[Metric]:
        if not isinstance(stats.get("driver"), Mapping):
            return
        streams = CounterMetricFamily(
            "p2preg_gossip_streams",
            "Push-pull TCP streams opened by this node (outbound) or accepted (inbound).",
            labels=["direction"],
        )
        streams.add_metric(["outbound"], _stat(stats, "driver.streams_opened") or 0.0)
        streams.add_metric(["inbound"], _stat(stats, "driver.streams_accepted") or 0.0)
        yield streams
        errors = CounterMetricFamily(
            "p2preg_gossip_stream_errors",
            "Push-pull streams that failed, timed out, or were refused (too many at once).",
            labels=["reason"],
        )
        for reason, key in (
            ("failed", "stream_failures"),
            ("timeout", "stream_timeouts"),
            ("refused", "streams_refused"),
        ):
            errors.add_metric([reason], _stat(stats, f"driver.{key}") or 0.0)
        yield errors


class RegistryMetrics:
    """Every metric the registry exposes, registered in ``self.registry`` (one per node)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "p2preg_http_requests_total",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "p2preg_http_request_duration_seconds",
            "Time from the request's arrival until its response was sent completely.",
            ["route", "method"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self._blob_bytes = Counter(
            "p2preg_blob_bytes_served_total",
            "Blob body bytes written to clients, by where the bytes came from.",
            ["source"],
            registry=self.registry,
        )
        self._upstream = Counter(
            "p2preg_upstream_requests_total",
            "Requests made to upstream registries, by registry, kind and status.",
            ["registry", "kind", "status"],
            registry=self.registry,
        )
        self._cache = Counter(
            "p2preg_cache_requests_total",
            "Mirror lookups answered from the local store (hit) or not (miss).",
            ["result"],
            registry=self.registry,
        )
        for source in sorted(BLOB_SOURCES):
            self._blob_bytes.labels(source=source)
        for result in ("hit", "miss"):
            self._cache.labels(result=result)
        self._p2p_sent = Counter(
            "p2preg_p2p_sent_bytes_total",
            "Blob body bytes this node sent to peers (answers on /p2p/v1/blobs, partial "
            "answers included).",
            registry=self.registry,
        )
        self._fill_received = Counter(
            "p2preg_fill_received_bytes_total",
            "Blob bytes this node's fills received, by the kind of source that sent them "
            "(peer, upstream).",
            ["source"],
            registry=self.registry,
        )
        for source in FILL_SOURCES:
            self._fill_received.labels(source=source)
        self._store = _StoreCollector()
        self.registry.register(self._store)
        self._maintenance = _MaintenanceCollector()
        self.registry.register(self._maintenance)
        self._gossip = _GossipCollector()
        self.registry.register(self._gossip)

    # --- called by the HTTP layer -------------------------------------------------------------

    def request_finished(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one answered request and observe its duration."""
        method_value = method_label(method)
        self._requests.labels(route=route, method=method_value, status=status_label(status)).inc()
        self._duration.labels(route=route, method=method_value).observe(max(0.0, duration_s))

    def blob_bytes_served(self, source: str | None, nbytes: int) -> None:
        """Add ``nbytes`` blob body bytes sent to a client from ``source``."""
        if nbytes > 0:
            self._blob_bytes.labels(source=source_label(source)).inc(nbytes)

    def peer_bytes_sent(self, nbytes: int) -> None:
        """Add ``nbytes`` blob body bytes sent to a peer (``p2preg_p2p_sent_bytes_total``)."""
        if nbytes > 0:
            self._p2p_sent.inc(nbytes)

    # --- called by the mirror ----------------------------------------------------------------

    def fill_bytes_received(self, source: str, nbytes: int) -> None:
        """Add ``nbytes`` a fill received from a source of kind ``source`` (peer, upstream)."""
        if nbytes > 0:
            label = source if source in FILL_SOURCES else "other"
            self._fill_received.labels(source=label).inc(nbytes)

    def upstream_request(self, registry: str, kind: str, status: int | str) -> None:
        """Count one request to upstream ``registry`` (a configured host, e.g. ``docker.io``).

        ``kind`` is one of a small fixed set chosen by the caller (``manifest``, ``blob``,
        ``token``, ``ping``...); ``status`` is the HTTP status, or ``"error"`` when no response
        arrived (connect failure, timeout, reset).
        """
        self._upstream.labels(registry=registry, kind=kind, status=status_label(status)).inc()

    def cache(self, hit: bool) -> None:
        """Count one mirror lookup as a cache hit or miss."""
        self._cache.labels(result="hit" if hit else "miss").inc()

    # --- provided by the node ----------------------------------------------------------------

    def set_store_readings(
        self, *, bytes_reading: StoreReading, blobs_reading: StoreReading
    ) -> None:
        """Register the callbacks read at scrape time for ``p2preg_store_bytes``/``_blobs``.

        They run on the event loop during a scrape, so they must be cheap (keep running totals).
        """
        self._store.bytes_reading = bytes_reading
        self._store.blobs_reading = blobs_reading

    def set_maintenance_source(self, source: MaintenanceStats | None) -> None:
        """Export ``source``'s eviction and garbage collection counters (read at scrape time);
        None stops exporting them (the node stopped its maintenance task)."""
        self._maintenance.source = source

    def set_gossip_reading(self, reading: GossipReading | None) -> None:
        """Export the ``p2preg_gossip_*`` families from ``reading()`` at scrape time (a node with
        gossip passes ``GossipService.stats``); None stops exporting them.

        It runs on the event loop during a scrape: it must be cheap and return a plain dict.
        """
        self._gossip.reading = reading


def exposition(metrics: RegistryMetrics, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its ``Content-Type`` (OpenMetrics when ``accept`` asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(metrics.registry), content_type
