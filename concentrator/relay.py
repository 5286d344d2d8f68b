"""The relay: many site connections into one started uplink connection to the BMI.

Routing by common address (CA), byte for byte in both directions; end-to-end
acknowledgement (a site's frame is confirmed only once the BMI confirmed the copy);
Ed. 2 redundancy on the uplink. See README, "Architecture".
"""

from __future__ import annotations

import logging
from collections import deque
from functools import partial

import trio

from .config import Config, SiteConfig
from .iec104.asdu import BROADCAST_CA, HEADER_LENGTH, AsduError, common_address, negative_mirror
from .iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Event,
    Link,
    Role,
    State,
    TestFrameConfirmed,
)
from .mirror.queue import MirrorQueue
from .mirror.stats import MirrorStats
from .session import LinkSession, set_nodelay
from .shedding.tap import ShedFeeder, ShedTap
from .stats import RelayStats, SiteStats
from .uplink_queue import UplinkQueue, releases

log = logging.getLogger(__name__)

# Reconnection to a site: first retry soon, then back off so a dead site costs little.
RETRY_MIN = 0.2
RETRY_MAX = 10.0
# BMI ASDUs for a site that is connecting or whose k window is full wait this many at
# most, and for at most the site's t1: later, the BMI has given up on them, and a command
# carried out that late would surprise everyone.
SITE_BACKLOG_LIMIT = 256


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = RelayStats()
        self.queue: UplinkQueue[SiteSession] = UplinkQueue()
        self.sites = [SiteLink(self, site) for site in config.sites]
        self._by_ca = {ca: site for site in self.sites for ca in site.config.common_addresses}
        self.uplinks: set[LinkSession] = set()
        self.active: LinkSession | None = None
        self.listen_port = 0
        # In an HA pair the sites are reached from the sites' virtual address only: a relay
        # on the appliance that does not hold it cannot connect (docs/ha.md).
        self.source_address = None if config.ha is None else str(config.ha.sites.virtual_address.ip)
        # The MQTT mirror (config `mqtt:`): forward_up only appends to its bounded queue;
        # decoding and publishing run in the mirror's own task (concentrator/mirror).
        self.mirror_queue: MirrorQueue | None = None
        if config.mqtt is not None:
            self.stats.mirror = MirrorStats()
            self.mirror_queue = MirrorQueue(config.mqtt.queue_limit, self.stats.mirror, frozenset(config.mqtt.critical))
        # Observers of copies (tap interface: up(site, asdu, now), down(asdu, now); O(1) each).
        self.taps: list[ShedTap] = []
        if config.shedding is not None:
            self.taps.append(ShedTap(frozenset(s.name for s in config.shedding.sites), config.shedding.queue_limit))

    async def run(self, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED) -> None:
        listen = self.config.uplink.listen
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._serve_bmi, listen.port, host=listen.host))
            self.listen_port = listeners[0].socket.getsockname()[1]
            log.info("listening for the BMI on %s:%d", listen.host, self.listen_port)
            for site in self.sites:
                nursery.start_soon(site.run)
            if self.config.mqtt is not None and self.mirror_queue is not None:
                # Decoding and publishing run in a process of their own (mirror/process.py).
                from .mirror.process import MirrorProcess

                mirror = MirrorProcess(self.config.mqtt, self.mirror_queue, self.stats)
                nursery.start_soon(mirror.run)
            if config_shedding := self.config.shedding:  # the compliance monitor's own process
                nursery.start_soon(ShedFeeder(config_shedding, self.taps[0]).run)
            task_status.started(self)

    # ------------------------------------------------------------------ uplink side
    async def _serve_bmi(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[0]
        stats = self.stats.uplink
        if not self.config.uplink.allows(peer):
            stats.refused += 1
            log.warning("refused a BMI connection from %s: not in uplink.allowed_peers", peer)
            await trio.aclose_forcefully(stream)
            return
        set_nodelay(stream)
        link = Link(Role.CONTROLLED, self.config.uplink.params, now=trio.current_time())
        session = LinkSession(stream, link, self._on_bmi, f"BMI {peer}")
        self.uplinks.add(session)
        stats.connections += 1
        stats.open_connections = len(self.uplinks)
        log.info("BMI %s connected (%d open)", peer, len(self.uplinks))
        try:
            reason = await session.run()
        finally:
            self.uplinks.discard(session)
            stats.open_connections = len(self.uplinks)
            if self.active is session:
                self._uplink_lost()
        stats.last_close_reason = reason
        log.info("BMI %s disconnected: %s", peer, reason)

    def _on_bmi(self, session: LinkSession, event: Event) -> None:
        if isinstance(event, Acknowledged):
            if session is self.active:
                self._bmi_confirmed(event.count)
        elif isinstance(event, AsduReceived):
            self._route_down(session, event.asdu)
        elif isinstance(event, DataTransferStarted):
            self._activate(session)
        elif isinstance(event, DataTransferStopped):
            if session is self.active:
                self._uplink_lost()
        elif isinstance(event, TestFrameConfirmed):
            self.stats.uplink.last_test_round_trip = event.round_trip

    def _activate(self, session: LinkSession) -> None:
        previous = self.active
        self.active = session
        self.stats.uplink.activations += 1
        self.stats.uplink.active_peer = session.label
        if previous is None:
            log.info("%s started data transfer: starting the sites", session.label)
            for site in self.sites:
                site.sync()
        else:
            # IEC 104 Ed. 2: a STARTDT on another connection moves the active role. What
            # the old connection did not confirm is sent again on the new one, in order.
            if previous.link.started:  # not if it is failing right now
                previous.link.deactivate()
            self.stats.uplink.requeued += self.queue.in_flight
            self.queue.requeue_in_flight()
            log.info("active role moved from %s to %s", previous.label, session.label)
        self._pump_uplink()

    def _uplink_lost(self) -> None:
        """No started uplink connection is left. The sites are disconnected, so every UPDC
        keeps (and will send again) whatever the BMI did not confirm; the relay holds no
        copy that could go out twice."""
        assert self.active is not None
        log.warning("%s no longer started: disconnecting the sites until the BMI starts again", self.active.label)
        self.active = None
        self.stats.uplink.active_peer = ""
        self.queue.clear()
        for site in self.sites:
            site.disconnect("uplink not started")

    def _bmi_confirmed(self, count: int) -> None:
        now = trio.current_time()
        items = self.queue.confirmed(count)
        for item in items:
            if item.origin is not None:
                item.origin.site.stats.record_confirmed(now - item.sent_at)
        for origin, released in releases(items).items():
            origin.link.acknowledge(released, now)
            origin.wake()
        self._pump_uplink()

    def forward_up(self, origin: SiteSession, asdu: bytes) -> None:
        now = trio.current_time()
        self.queue.push(origin, asdu, now)
        origin.site.stats.record_up(asdu, now)
        self._pump_uplink()
        if self.mirror_queue is not None:  # after the uplink got it: the mirror never delays it
            self.mirror_queue.push(asdu, origin.site.config.name, now)
        for tap in self.taps:
            tap.up(origin.site.config.name, asdu, now)

    def _pump_uplink(self) -> None:
        active = self.active
        if active is None:
            return
        link = active.link
        now = trio.current_time()
        sent = 0
        while link.can_send and (item := self.queue.take(now)) is not None:
            link.send_asdu(item.asdu, now)
            if item.origin is not None:
                item.origin.site.stats.record_forwarded(now - item.received_at)
            sent += 1
        if sent:
            self.stats.uplink.asdus_up += sent
            active.wake()

    def _route_down(self, session: LinkSession, asdu: bytes) -> None:
        if session is not self.active:
            return
        try:
            ca = common_address(asdu)
        except AsduError as exc:
            session.close(f"malformed ASDU from the BMI: {exc}")
            return
        self.stats.uplink.asdus_down += 1
        for tap in self.taps:
            tap.down(asdu, trio.current_time())
        if ca == BROADCAST_CA:
            now = trio.current_time()
            for site in self.sites:
                site.send_down(asdu, now)
            return
        target = self._by_ca.get(ca)
        if target is not None:
            target.send_down(asdu, trio.current_time())
            return
        # What a controlled station answers for a CA it does not have: the only ASDU
        # the concentrator ever originates.
        self.stats.uplink.negative_answers += 1
        log.warning("BMI ASDU for unknown CA %d answered negatively (cause 46)", ca)
        self.queue.push(None, negative_mirror(asdu), trio.current_time())
        self._pump_uplink()


class SiteLink:
    """The relay's connection to one UPDC: connect, start while the uplink is started,
    reconnect with backoff, primary endpoint first."""

    def __init__(self, relay: Relay, config: SiteConfig) -> None:
        self.relay = relay
        self.config = config
        self.session: SiteSession | None = None
        # BMI ASDUs (and when they arrived) waiting for the site's start or its k window.
        self.backlog: deque[tuple[bytes, float]] = deque()
        self.stats = SiteStats(config.name, tuple(config.common_addresses))
        relay.stats.sites[config.name] = self.stats

    async def run(self) -> None:
        self.stats.state_since = trio.current_time()
        delay = RETRY_MIN
        while True:
            stream = await self._connect()
            if stream is None:
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            await self._serve(stream)
            await trio.sleep(RETRY_MIN)

    async def _connect(self) -> trio.SocketStream | None:
        self.stats.set_state("connecting", trio.current_time())
        for endpoint in self.config.endpoints:
            try:
                with trio.fail_after(self.config.params.t0):
                    stream = await trio.open_tcp_stream(
                        endpoint.host, endpoint.port, local_address=self.relay.source_address
                    )
            except (OSError, trio.TooSlowError) as exc:
                log.debug("site %s: %s unreachable: %r", self.config.name, endpoint, exc)
                continue
            self.stats.endpoint = str(endpoint)
            return stream
        self.stats.set_state("disconnected", trio.current_time())
        return None

    async def _serve(self, stream: trio.SocketStream) -> None:
        set_nodelay(stream)
        link = Link(Role.CONTROLLING, self.config.params, manual_ack=True, now=trio.current_time())
        session = SiteSession(self, stream, link)
        self.session = session
        self.stats.connects += 1
        self.stats.set_state("connected", trio.current_time())
        log.info("site %s connected on %s", self.config.name, self.stats.endpoint)
        self.sync()
        try:
            reason = await session.run()
        finally:
            self.session = None
            self.stats.set_state("disconnected", trio.current_time())
            self.relay.queue.discard_pending(session)
        self.stats.last_close_reason = reason
        log.warning("site %s disconnected: %s", self.config.name, reason)

    def sync(self) -> None:
        """Start data transfer if the uplink is started (sites are never stopped: losing
        the uplink disconnects them instead, see Relay._uplink_lost)."""
        session = self.session
        if session is not None and self.relay.active is not None and session.link.state is State.STOPPED:
            session.link.start(trio.current_time())
            session.wake()

    def disconnect(self, reason: str) -> None:
        """The uplink is gone: close the connection, and drop the BMI ASDUs still waiting
        (the connection that sent them is gone too)."""
        self.stats.dropped_down += len(self.backlog)
        self.backlog.clear()
        if self.session is not None:
            self.session.close(reason)

    def send_down(self, asdu: bytes, received_at: float) -> None:
        """Send now if the site is started and its window open, else wait in the backlog:
        a BMI that interrogates right after its STARTDT must reach a site that is still
        connecting (seen in tests: sites connecting after the BMI lost their interrogation)."""
        if len(self.backlog) >= SITE_BACKLOG_LIMIT:
            self.stats.dropped_down += 1
            log.warning("site %s backlog full: BMI ASDU type %d dropped", self.config.name, asdu[0])
            return
        self.backlog.append((asdu, received_at))
        if self.session is not None:
            self._drain(self.session)

    def _drain(self, session: SiteSession) -> None:
        link = session.link
        now = trio.current_time()
        oldest = now - self.config.params.t1
        sent = 0
        while self.backlog and link.can_send:
            asdu, received_at = self.backlog.popleft()
            if received_at < oldest:
                self.stats.dropped_down += 1
                log.warning(
                    "site %s: BMI ASDU type %d dropped after waiting %.1f s",
                    self.config.name,
                    asdu[0],
                    now - received_at,
                )
                continue
            link.send_asdu(asdu, now)
            self.stats.record_down(asdu, now - received_at)
            sent += 1
        if sent:
            session.wake()

    def _on_event(self, session: LinkSession, event: Event) -> None:
        assert isinstance(session, SiteSession)
        if isinstance(event, AsduReceived):
            if len(event.asdu) < HEADER_LENGTH:
                session.close(f"malformed ASDU of {len(event.asdu)} octets")
            elif self.relay.active is None:
                session.close("data while the uplink is not started")
            else:
                self.relay.forward_up(session, event.asdu)
        elif isinstance(event, Acknowledged):
            self._drain(session)
        elif isinstance(event, DataTransferStarted):
            self.stats.set_state("started", trio.current_time())
            self._drain(session)
        elif isinstance(event, DataTransferStopped):
            self.stats.set_state("connected", trio.current_time())
        elif isinstance(event, TestFrameConfirmed):
            self.stats.last_test_round_trip = event.round_trip


class SiteSession(LinkSession):
    """A connection to a UPDC; the relay's uplink queue remembers which one each ASDU
    came from, to confirm it there once the BMI confirmed it."""

    def __init__(self, site: SiteLink, stream: trio.abc.Stream, link: Link) -> None:
        super().__init__(stream, link, site._on_event, f"site {site.config.name} ({site.stats.endpoint})")
        self.site = site
