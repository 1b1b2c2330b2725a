"""One node, wired together: storage, the /v2 app, auth, observability, mirror and gossip.

Owns: ``Node`` (``start``/``stop`` and the order things happen in) and nothing else; every part it
wires is built and tested in its own package. ``cli`` runs it under a signal handler. Which API
goes on which listener (``--listen`` for local clients, ``--peer-listen`` for peers,
``--metrics-listen`` for Prometheus) is the rule of ``p2preg.listeners``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from p2preg.clock import Clock, MonotonicClock, WallClock
from p2preg.config import Config, ConfigError, resolve_cache_max_bytes, split_host_port
from p2preg.gossip.config import format_host_port
from p2preg.listeners import (
    OPEN_MIRROR_FIX_SEPARATOR,
    is_loopback_host,
    open_mirror_problem,
    peer_auth_middleware,
)
from p2preg.logs import event
from p2preg.oci.digest import Digest
from p2preg.registry.app import Middleware, create_registry_app
from p2preg.registry.auth import AuthPolicy, auth_middleware
from p2preg.registry.content import ContentSource, LocalContentSource
from p2preg.registry.context import RegistryContext
from p2preg.registry.fileslice import SEND_PROGRESS_TIMEOUT_KEY
from p2preg.registry.htpasswd import Htpasswd
from p2preg.registry.httpserver import RegistryRunner
from p2preg.registry.listing import Listing
from p2preg.registry.observability import AccessLogger, Observability
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.lock import DataDirLock
from p2preg.storage.maintenance import Maintenance
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.scrub import MIB, Scrubber
from p2preg.storage.uploads import UploadManager

log = logging.getLogger("p2preg.node")


class Node:
    """A running p2preg node. ``start`` binds the sockets; ``stop`` undoes everything it did.

    ``wall_clock`` (tests pass a ``FakeClock``) stamps stored times and drives the storage
    maintenance loop: access times, upload expiry, eviction and garbage collection.
    """

    def __init__(self, config: Config, *, wall_clock: Clock | None = None) -> None:
        self.config = config
        self.clock = MonotonicClock()
        self.wall_clock: Clock = wall_clock if wall_clock is not None else WallClock()
        self.layout = StoreLayout(Path(config.data_dir))
        self.observability = Observability()
        self._runner: web.AppRunner | None = None
        self._peer_runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_url = ""  # the /metrics-only listener's URL when --metrics-listen is set
        self.peer_url = ""  # the peer listener's URL when --peer-listen is set
        self._lock: DataDirLock | None = None
        self._meta: MetadataStore | None = None
        self._closers: list[Any] = []
        self.gossip: Any = None  # GossipService when --gossip-listen is set
        self.maintenance: Maintenance | None = None
        self.scrubber: Scrubber | None = None
        self.blobs: BlobStore | None = None
        self.p2p: Any = None  # the peer blob path: mirror mode with gossip
        self.operate: Any = None  # cluster pulls and the status page (p2preg.operate)
        self._fetcher: Any = None  # the mirror's fills, read by the status page
        self.url = ""

    @property
    def metrics(self) -> Any:
        return self.observability.metrics

    async def start(self) -> None:
        config = self.config
        self.observability.health.set_unready("starting")
        if config.mode == "mirror":
            self._check_open_mirror()
        self.layout.ensure()
        blobs = BlobStore(self.layout)
        self._lock = DataDirLock(self.layout)
        self._lock.acquire()  # before recover(): recovery deletes temp files
        meta = self._meta = MetadataStore(self.layout.db_path, clock=self.wall_clock)
        uploads = UploadManager(
            self.layout, blobs, meta, self.wall_clock, max_sessions=config.upload_sessions_max,
            max_sessions_per_owner=config.upload_sessions_per_client_max,
        )
        removed = blobs.recover()
        recovery = uploads.recover()
        event(log, "store_recovered", data_dir=str(self.layout.root), temp_files_removed=removed,
              uploads=str(recovery))
        self.metrics.set_store_readings(
            bytes_reading=blobs.total_bytes, blobs_reading=blobs.count
        )
        quota = resolve_cache_max_bytes(config, blobs.total_bytes())
        if config.mode == "mirror":
            event(log, "cache_quota", max_bytes=quota,
                  source="--cache-max-bytes" if config.cache_max_bytes is not None
                  else f"--cache-max-disk-ratio {config.cache_max_disk_ratio:g}")
        # Wall clock: access times are stored on disk and compared with file mtimes.
        self.maintenance = Maintenance(
            blobs, meta, uploads, self.wall_clock,
            max_bytes=quota, min_age_s=config.cache_min_age_s,
            upload_max_age_s=config.upload_max_age_s, interval_s=config.maintenance_interval_s,
            mode=config.mode, low_water_ratio=config.cache_low_water_ratio,
            on_evict=self._on_evict, gc_interval_s=config.gc_interval_s,
            gc_grace_s=config.gc_grace_s,
        )
        self.metrics.set_maintenance_source(self.maintenance)
        # Integrity: a rotten blob leaves the store (a mirror deletes it and fetches it again, a
        # registry keeps it in quarantine/), and a mirror advertises the drop.
        blobs.keep_quarantined = config.mode != "mirror"
        if config.mode == "mirror":  # a fill that would not fit evicts first (storage/room.py)
            blobs.room.room_maker = self.maintenance.make_room
        self.blobs = blobs
        blobs.corruption_listeners.append(self._on_corrupt)
        self.scrubber = Scrubber(
            blobs, self.wall_clock, rate_bytes_s=config.scrub_rate_mib_s * MIB,
            interval_s=config.scrub_interval_s,
        )
        self.scrubber.register_metrics(self.metrics.registry)
        blobs.room.register_metrics(self.metrics.registry)
        blobs.register_metrics(self.metrics.registry)

        # Bind the HTTP sockets first: gossip advertises the real peer address (port 0 too).
        listen_sock = self._bind_listener(config.listen_host, config.listen_port)
        host, port = listen_sock.getsockname()[:2]
        http_addr = format_host_port(host, port)
        peer_sock: socket.socket | None = None
        if config.peer_listen:
            peer_sock = self._bind_listener(*split_host_port(config.peer_listen, "--peer-listen"))
            http_addr = format_host_port(*peer_sock.getsockname()[:2])
        elif config.gossip_listen and not is_loopback_host(config.listen_host):
            log.warning("serving /v2 and the peer API on one non-loopback listener (%s): set "
                        "--listen 127.0.0.1:PORT and --peer-listen HOST:PORT to keep /v2 local",
                        config.listen)
        metrics_sock: socket.socket | None = None
        if config.metrics_listen:
            metrics_sock = self._bind_listener(
                *split_host_port(config.metrics_listen, "--metrics-listen"))
        peer_tls: ssl.SSLContext | None = None
        if config.tls_cert:  # a TLS cluster: peers are fetched from over HTTPS too
            from p2preg.tlsconfig import client_context

            peer_tls = client_context(config.peer_ca)
        keyring = None
        if config.gossip_listen:
            from p2preg.gossip.service import load_keyring

            keyring = load_keyring(config.cluster_key_file)
        if config.gossip_listen:
            from p2preg.gossip.service import GossipService, GossipServiceConfig

            gossip_config = GossipServiceConfig.from_node_config(config, http_addr=http_addr)
            if not config.node_name:
                from dataclasses import replace

                from p2preg.gossip.nodeid import NodeIdError, default_node_name

                try:
                    name = default_node_name(self.layout.root)
                except NodeIdError as exc:
                    raise ConfigError(str(exc)) from exc
                gossip_config = replace(gossip_config, node_name=name)
            self.gossip = GossipService(gossip_config)

        content: ContentSource | None = None
        mirror_listing: Listing | None = None
        if config.mode == "mirror":
            from p2preg.pull.mirror import create_mirror
            from p2preg.upstream.config import UpstreamConfigError

            if self.gossip is not None:
                from p2preg.p2p.node_glue import P2P

                self.p2p = P2P(self.gossip, blobs, keyring=keyring,
                               clock=self.clock, wall_clock=self.wall_clock, peer_tls=peer_tls,
                               verify_blob=self.scrubber.verify_now)
                self.p2p.register_metrics(self.metrics.registry)
            try:
                mirror = create_mirror(
                    config, blobs, meta, metrics=self.metrics, clock=self.clock,
                    wall_clock=self.wall_clock,
                    peer_sources=self.p2p.peer_sources if self.p2p is not None else None,
                )
            except UpstreamConfigError as exc:
                raise ConfigError(str(exc)) from exc
            self._closers.append(mirror)
            self._fetcher = mirror.fetcher
            mirror_listing = mirror.listing
            if self.p2p is not None:
                self.p2p.attach(mirror)
                self._closers.append(self.p2p)  # closers run in reverse: p2p before the mirror
            from p2preg.registry.recording import RecordingContentSource

            content = RecordingContentSource(mirror, self.maintenance.recorder, blobs)
        else:
            # Reads are recorded in registry mode too: GC spares a blob read within the grace
            # period (a client that checked a layer with HEAD is about to reference it).
            from p2preg.registry.recording import RecordingContentSource

            content = RecordingContentSource(
                LocalContentSource(blobs, meta), self.maintenance.recorder, blobs
            )

        ctx = RegistryContext(
            blobs=blobs, meta=meta, uploads=uploads, clock=self.wall_clock,
            read_only=config.mode == "mirror", max_manifest_bytes=config.manifest_max_bytes,
        )
        if content is not None:
            ctx.content = content
        if mirror_listing is not None:
            ctx.listing = mirror_listing

        middlewares: list[Middleware] = [self.observability.middleware]
        if config.mode == "mirror":
            from p2preg.registry.namespace import namespace_middleware

            middlewares.append(namespace_middleware)
        self.operate = self._operate(ctx.content, blobs, meta, keyring, peer_tls)
        if peer_sock is None:  # /p2p is served here: its uploads are listed on /ui
            middlewares.append(self.operate.uploads.middleware)
        if config.htpasswd:
            from p2preg.operate.operator import EXEMPT_PREFIX
            from p2preg.registry.auth import DEFAULT_EXEMPT_PATHS

            policy = AuthPolicy(Htpasswd(config.htpasswd), anonymous_read=config.anonymous_read,
                                exempt_paths=(*DEFAULT_EXEMPT_PATHS, EXEMPT_PREFIX))
            middlewares.append(auth_middleware(policy))
        app = create_registry_app(ctx, middlewares=middlewares)
        app[SEND_PROGRESS_TIMEOUT_KEY] = config.send_progress_timeout_s
        self.observability.setup(app)
        peer_app = app if peer_sock is None else self._peer_app(keyring)
        peer_app[SEND_PROGRESS_TIMEOUT_KEY] = config.send_progress_timeout_s  # peers read too
        if self.gossip is not None:
            from p2preg.gossip.http import members_routes

            peer_app.add_routes(members_routes(self.gossip))
            if peer_app is not app and is_loopback_host(config.listen_host):
                app.add_routes(members_routes(self.gossip))  # `p2preg members` on the host
        if self.p2p is not None:
            peer_app.add_routes(self.p2p.routes())
        for routes in self.operate.local_routes():
            app.add_routes(routes)
        peer_app.add_routes(self.operate.peer_routes())
        self._closers.append(self.operate)

        ssl_context: ssl.SSLContext | None = None
        if config.tls_cert and config.tls_key:
            from p2preg.tlsconfig import server_context

            ssl_context = server_context(config.tls_cert, config.tls_key)

        self._runner = RegistryRunner(
            app, header_timeout_s=config.header_timeout_s, access_log_class=AccessLogger,
            handle_signals=False,
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, listen_sock, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context else "http"
        if peer_sock is not None:
            # the same connection layer as /v2: the header deadline (--header-timeout-s)
            # matters most on the listener other hosts reach
            self._peer_runner = RegistryRunner(
                peer_app, header_timeout_s=config.header_timeout_s,
                access_log_class=AccessLogger, handle_signals=False,
            )
            await self._peer_runner.setup()
            await web.SockSite(self._peer_runner, peer_sock, ssl_context=ssl_context).start()
            self.peer_url = f"{scheme}://{format_host_port(*peer_sock.getsockname()[:2])}"
        if metrics_sock is not None:
            self._metrics_runner = RegistryRunner(
                self.observability.metrics_app(), header_timeout_s=config.header_timeout_s,
                access_log_class=AccessLogger, handle_signals=False,
            )
            await self._metrics_runner.setup()
            await web.SockSite(self._metrics_runner, metrics_sock, ssl_context=ssl_context).start()
            self.metrics_url = (
                f"{scheme}://{format_host_port(*metrics_sock.getsockname()[:2])}")
        self.maintenance.start()
        self.scrubber.start()
        if self.gossip is not None:
            await self.gossip.start()
            self.metrics.set_gossip_reading(self.gossip.stats)
            event(log, "gossip_started", node=self.gossip.node_name,
                  gossip=str(self.gossip.bound_address), advertise=config.advertise or http_addr)
        if self.p2p is not None:
            await self.p2p.start()
        self.url = f"{scheme}://{http_addr if peer_sock is None else format_host_port(host, port)}"
        self.observability.health.set_ready()
        urls = {"peer_url": self.peer_url, "metrics_url": self.metrics_url}
        event(log, "listening", url=self.url, mode=config.mode,
              **{name: url for name, url in urls.items() if url})

    def _check_open_mirror(self) -> None:
        """Refuse to serve /v2 with upstream credentials to the network without logins."""
        from p2preg.upstream.config import UpstreamConfigError, upstreams_from_config

        try:
            upstreams = upstreams_from_config(self.config)
        except UpstreamConfigError as exc:
            raise ConfigError(str(exc)) from exc
        problem = open_mirror_problem(
            listen_host=self.config.listen_host,
            has_upstream_credentials=any(u.credentials is not None for u in upstreams),
            htpasswd=bool(self.config.htpasswd), allowed=self.config.allow_open_mirror)
        if problem is not None:
            what, _, fix = problem.partition(OPEN_MIRROR_FIX_SEPARATOR)
            raise ConfigError(what, fix=fix or None)

    def _peer_app(self, keyring: Any) -> web.Application:
        """The app of the peer listener: ``/p2p`` only; with a key, every request signed."""
        from p2preg.gossip.http import MEMBERS_PATH
        from p2preg.operate.peer import PULLS_PATH
        from p2preg.p2p.auth import RequestVerifier
        from p2preg.p2p.server import BLOB_ROUTE, TAG_ROUTE

        middlewares: list[Middleware] = [self.observability.middleware,
                                         self.operate.uploads.middleware]
        if keyring is not None:
            # blobs, tags and pulls are verified by their handlers; everything else here
            self_verified = [r.split("{", 1)[0] for r in (BLOB_ROUTE, TAG_ROUTE)] + [PULLS_PATH]
            assert not MEMBERS_PATH.startswith(tuple(self_verified))
            middlewares.append(peer_auth_middleware(
                RequestVerifier(keyring, clock=self.wall_clock), self_verified=self_verified))
        app = web.Application(middlewares=middlewares)
        app.on_response_prepare.append(self.observability.on_response_prepare)
        return app

    def _operate(self, content: ContentSource, blobs: BlobStore, meta: MetadataStore,
                 keyring: Any, peer_ssl: ssl.SSLContext | None) -> Any:
        """Cluster pulls and the status page (``p2preg.operate``)."""
        from p2preg.operate.wiring import Operate

        config = self.config
        fetcher = self._fetcher
        return Operate(
            mode=config.mode, content=content, blobs=blobs, meta=meta,
            metrics=self.metrics.registry, clock=self.clock, wall_clock=self.wall_clock,
            gossip=self.gossip, keyring=keyring,
            fetcher=lambda: fetcher, scheme="https" if config.tls_cert else "http",
            peer_ssl=peer_ssl, on_evict=self._on_evict, node_name=config.node_name)

    def _on_evict(self, digest: str) -> None:
        if self.gossip is not None:
            self.gossip.advertise_drop(digest)

    def _on_corrupt(self, digest: Digest) -> None:
        if self.config.mode == "mirror":
            if self._meta is not None:
                self._meta.forget_access(str(digest))
            self._on_evict(str(digest))

    @staticmethod
    def _bind_listener(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=1024)

    async def stop(self) -> None:
        self.observability.health.set_unready("draining")
        if self.gossip is not None:
            self.metrics.set_gossip_reading(None)
            await self.gossip.stop()
            self.gossip = None
        for runner in (self._metrics_runner, self._peer_runner, self._runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._peer_runner = self._metrics_runner = None
        for closer in reversed(self._closers):
            result = closer.close()
            if hasattr(result, "__await__"):
                await result
        self._closers.clear()
        if self.scrubber is not None:
            await self.scrubber.stop()
            self.scrubber = None
        if self.maintenance is not None:
            await self.maintenance.stop()
            self.maintenance = None
            self.metrics.set_maintenance_source(None)
        if self._meta is not None:
            self._meta.close()
            self._meta = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        event(log, "stopped")
