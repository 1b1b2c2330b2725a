"""The asyncio glue around the sans-I/O ``GossipCore``: UDP, push-pull over TCP, one timer.

Owns ``GossipDriver``, which

* binds a UDP endpoint and a TCP listener on the same ``HOST:PORT`` (port 0 picks one free for
  both), feeds every datagram to ``core.receive_datagram`` and sends what ``datagrams_to_send``
  returns;
* keeps exactly one timer armed at ``core.get_timer()`` and calls ``handle_timer`` when it fires;
* runs push-pull anti-entropy over TCP: it opens the streams the core asks for
  (``push_pulls_to_start``: joins and the periodic exchange with a random member) and answers
  incoming ones. Frames are the core's length-prefixed msgpack packets (``core.encode_stream`` /
  ``core.stream_decoder``: HMAC, size cap); a bad frame, an oversized length, a stalled or slow peer
  (``stream_timeout_s`` for the whole exchange) closes that one connection and is counted, nothing
  else happens. At most ``max_inbound_push_pulls`` incoming exchanges run at once: one more is
  refused at accept (closed at once, counted in ``streams_refused``; its initiator sees a failed
  push-pull and tries again at its next period), so a herd of initiators cannot pile full catalog
  states into one node. Outgoing exchanges are capped by ``max_outbound_push_pulls`` the same way
  (a skipped one counts as a failure); an initiator whose peer closes before replying counts a
  failure, not a completed exchange;
* hands every core event to the ``on_event`` callbacks;
* sends only to IP literals: a peer announcing a host name is never resolved (no blocking lookup
  in ``sendto``, no DNS traffic steered by a stranger);
* on ``stop(leave=True)`` announces a graceful leave and keeps gossiping it for
  ``leave_timeout_s`` before closing the sockets.

After every input (datagram, stream message, timer, API call) the driver calls ``flush()``: the
one place that drains the core. Times given to the core come from ``clock`` (MonotonicClock in
production); the timer itself is ``loop.call_later`` with the same delay.

Must not import discovery, the service, aiohttp or anything outside ``p2preg.gossip`` and
``p2preg.clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2preg.clock import Clock, MonotonicClock
from p2preg.gossip.config import Addr
from p2preg.gossip.core import GossipCore, PushPullStart
from p2preg.gossip.events import Event
from p2preg.gossip.wire import DropReason

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]
CoreFactory = Callable[[Addr], GossipCore]
"""Builds the core once the driver knows its bound gossip port."""

READ_CHUNK_BYTES = 64 * 1024
BIND_ATTEMPTS = 20
#: At most one warning this often about packets the cluster key does not authenticate.
UNAUTHENTICATED_WARN_INTERVAL_S = 60.0


@dataclass
class DriverStats:
    """Driver-level counters (the core counts packets and drops in ``core.stats``/``drops``)."""

    datagrams_sent: int = 0
    send_errors: int = 0
    streams_accepted: int = 0
    streams_refused: int = 0
    """Inbound push-pulls closed at accept: ``max_inbound_push_pulls`` were running."""
    streams_opened: int = 0
    streams_completed: int = 0
    stream_failures: int = 0
    stream_timeouts: int = 0
    core_errors: int = 0


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, driver: GossipDriver) -> None:
        self._driver = driver

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._driver._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer and the like: SWIM notices by itself.
        self._driver.stats.send_errors += 1


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """Peers announce addresses; only IP literals are used, so a hostile announcement can never
    make the event loop block on a DNS lookup inside ``sendto``."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class GossipDriver:
    """Runs one ``GossipCore`` on real sockets. Start with ``await driver.start(host, port,
    make_core)``; the core is then ``driver.core``."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        stream_timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        max_inbound_push_pulls: int = 32,
        max_outbound_push_pulls: int = 32,
        leave_timeout_s: float = 1.0,
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self._unauthenticated_warned_at = -math.inf
        self._unauthenticated_unwarned = 0
        self.stream_timeout_s = stream_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_inbound_push_pulls = max_inbound_push_pulls
        """Concurrent incoming push-pulls (memberlist allows 128 of its membership-only
        exchanges; ours carry whole catalogs, up to ``max_stream_bytes`` a frame)."""
        self.max_outbound_push_pulls = max_outbound_push_pulls
        self.leave_timeout_s = leave_timeout_s
        self.stats = DriverStats()
        self._core: GossipCore | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._streams: set[asyncio.Task[None]] = set()
        self._inbound = 0
        self._outbound = 0
        self._on_event: list[EventCallback] = []
        self._closing = False
        self.address: Addr | None = None
        """The bound gossip address (after ``start``)."""

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def core(self) -> GossipCore:
        if self._core is None:
            raise RuntimeError("GossipDriver.start() has not run")
        return self._core

    @property
    def running(self) -> bool:
        return self._core is not None and not self._closing

    def add_event_callback(self, callback: EventCallback) -> None:
        self._on_event.append(callback)

    async def start(self, host: str, port: int, make_core: CoreFactory) -> Addr:
        """Bind UDP and TCP on ``host:port`` (same port for both), build the core, start."""
        udp, tcp, bound = await self._bind(host, port)
        self._udp, self._tcp, self.address = udp, tcp, bound
        try:
            self._core = make_core(bound)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self.flush()
        return bound

    async def _bind(
        self, host: str, port: int
    ) -> tuple[asyncio.DatagramTransport, asyncio.Server, Addr]:
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS if port == 0 else 1):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port), family=_family_of(host)
            )
            sockname = transport.get_extra_info("sockname")
            bound: Addr = (str(sockname[0]), int(sockname[1]))
            try:
                server = await asyncio.start_server(
                    self._accept_stream,
                    host,
                    bound[1],
                    family=_family_of(host),
                    reuse_address=True,
                    backlog=128,
                )
            except OSError as exc:
                transport.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                last_error = exc  # the UDP port's TCP twin is taken: try another port
                continue
            return transport, server, bound
        assert last_error is not None
        raise last_error

    async def stop(self, *, leave: bool = True) -> None:
        """Leave gracefully (gossip the leave for ``leave_timeout_s``), then close everything."""
        if self._core is None or self._closing:
            return
        if leave and not self.core.leaving:
            self.core.leave(self.clock.now())
            self.flush()
            if self.core.num_live() > 1:
                await asyncio.sleep(self.leave_timeout_s)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._streams):
            task.cancel()
        for task in list(self._streams):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # -- driving the core ------------------------------------------------------------------

    def join(self, seeds: Sequence[Addr]) -> None:
        """Start a join push-pull with each seed (this node's own address is skipped)."""
        if self.running and seeds:
            self.core.join(list(seeds), self.clock.now())
            self.flush()

    def flush(self) -> None:
        """Drain the core: send datagrams, start push-pulls, deliver events, re-arm the timer."""
        core = self._core
        if core is None or self._closing:
            return
        now = self.clock.now()
        udp = self._udp
        for data, addr in core.datagrams_to_send(now):
            if udp is None or udp.is_closing():
                break
            if not is_ip_literal(addr[0]):
                self.stats.send_errors += 1
                continue
            try:
                udp.sendto(data, addr)
                self.stats.datagrams_sent += 1
            except OSError:
                self.stats.send_errors += 1
        for start in core.push_pulls_to_start(now):
            if is_ip_literal(start.addr[0]) and self._outbound < self.max_outbound_push_pulls:
                self._outbound += 1
                self._spawn(self._initiate(start))
            else:
                self.stats.stream_failures += 1
        while (event := core.next_event()) is not None:
            for callback in self._on_event:
                try:
                    callback(event)
                except Exception:
                    log.exception("gossip event callback failed")
        self._arm_timer(core.get_timer(), now)

    def _arm_timer(self, deadline: float | None, now: float) -> None:
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at == deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - now), self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._core is None or self._closing:
            return
        try:
            self._core.handle_timer(self.clock.now())
        except Exception:
            self.stats.core_errors += 1
            log.exception("gossip core failed in handle_timer")
        self.flush()

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        if self._core is None or self._closing:
            return
        before = self._unauthenticated()
        try:
            self._core.receive_datagram(data, addr, self.clock.now())
        except Exception:  # the core promises not to raise; one bad packet must not kill us
            self.stats.core_errors += 1
            log.exception("gossip core failed on a datagram from %s", addr)
        self._warn_if_unauthenticated(before, addr)
        self.flush()

    def _unauthenticated(self) -> int:
        return self.core.drops.by_reason[DropReason.UNAUTHENTICATED] if self._core else 0

    def _warn_if_unauthenticated(self, before: int, addr: Addr | str) -> None:
        """A node whose key differs from its peers' stays alone; say so on this side too, at
        most once per ``UNAUTHENTICATED_WARN_INTERVAL_S``."""
        dropped = self._unauthenticated() - before
        if dropped <= 0:
            return
        self._unauthenticated_unwarned += dropped
        now = self.clock.now()
        if now - self._unauthenticated_warned_at < UNAUTHENTICATED_WARN_INTERVAL_S:
            return
        log.warning("gossip: %d packets (the latest from %s) could not be authenticated with "
                    "this node's cluster key (a different --cluster-key-file here or there?)",
                    self._unauthenticated_unwarned, addr)
        self._unauthenticated_warned_at = now
        self._unauthenticated_unwarned = 0

    # -- push-pull streams --------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _initiate(self, start: PushPullStart) -> None:
        self.stats.streams_opened += 1
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.stream_timeout_s):
                reader, conn = await asyncio.wait_for(
                    asyncio.open_connection(*start.addr), self.connect_timeout_s
                )
                writer = conn
                conn.write(self.core.encode_stream(start.request))
                await conn.drain()
                if not await self._exchange(reader, conn):
                    raise EOFError("peer closed the push-pull before replying (refused?)")
            self.stats.streams_completed += 1
        except TimeoutError:
            self.stats.stream_timeouts += 1
            log.debug("push-pull with %s timed out", start.addr)
        except (OSError, EOFError) as exc:
            self.stats.stream_failures += 1
            log.debug("push-pull with %s failed: %s", start.addr, exc)
        except Exception:
            self.stats.core_errors += 1
            log.exception("push-pull with %s failed unexpectedly", start.addr)
        finally:
            self._outbound -= 1
            if writer is not None:
                writer.close()

    async def _accept_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing or self._inbound >= self.max_inbound_push_pulls:
            self.stats.streams_refused += 1
            writer.close()
            return
        self.stats.streams_accepted += 1
        self._inbound += 1
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            async with asyncio.timeout(self.stream_timeout_s):
                await self._exchange(reader, writer)
            self.stats.streams_completed += 1
        except TimeoutError:
            self.stats.stream_timeouts += 1
        except (OSError, EOFError):
            self.stats.stream_failures += 1
        except Exception:
            self.stats.core_errors += 1
            log.exception("incoming push-pull failed unexpectedly")
        finally:
            self._inbound -= 1
            writer.close()
            if task is not None:
                self._streams.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read frames and answer them until the core has nothing more to say or EOF.

        True if at least one message was received. A bad frame (decoder failed) closes the
        stream: raises ``EOFError``.
        """
        decoder = self.core.stream_decoder()
        received = False
        while True:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                return received
            before = self._unauthenticated()
            messages = decoder.feed(data)
            self._warn_if_unauthenticated(before, "a push-pull stream")
            for message in messages:
                received = True
                reply = self.core.handle_push_pull(message, self.clock.now())
                self.flush()
                if reply is None:
                    return True
                writer.write(self.core.encode_stream(reply))
                await writer.drain()
            if decoder.failed is not None:
                raise EOFError(f"bad push-pull frame: {decoder.failed}")
