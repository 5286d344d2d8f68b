"""The relay's decisions, with no I/O and no clock (aioquic's `QuicConnection` shape).

`RelayCore` owns every IEC 104 link of the relay (the BMI connections and one connection
per site), routing by common address (CA), the uplink queue, end-to-end acknowledgement,
the Ed. 2 active role, the BMI ASDUs waiting for a site (backlogs) and when sites
connect. The driver (driver.py) tells it what happened, with the time:

    start(now)                                       the relay starts: connect the sites
    uplink_accepted(peer, now) -> ConnId | None     a BMI connection came in
    site_connecting(site, now) / site_connected(site, endpoint, now) -> ConnId
    site_connect_failed(site, now)
    receive_data(conn, data, now)                    bytes read from a connection
    connection_lost(conn, cause, detail, now)        the socket ended
    handle_timer(now)                                get_timer() has passed

and reads back actions with `next_action()`: `Transmit` (write these bytes on this
connection), `Close` (close it; the core has already forgotten it), `ConnectSite` (open a
connection to this site at that time), `TimerAt` (a deadline earlier than the last
`get_timer()` appeared). Nothing here waits, sleeps or touches a socket, so every
decision is tested instantly (tests/unit/test_relay_core*.py).

Ed. 2 hand-over: a STARTDT on another BMI connection moves the active role and the
relay closes the previously active connection (cause `superseded`), as lib60870's
server does; what that connection had not confirmed is sent again, in order, on the new
one. Closing it is what keeps the end-to-end acknowledgement exact: a late
confirmation from the old connection can no longer be counted against the new one's
frames.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..iec104.asdu import BROADCAST_CA, HEADER_LENGTH, AsduError, common_address, negative_mirror
from ..iec104.errors import Cause, ConcentratorError
from ..iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Link,
    LinkFailed,
    LinkParams,
    Role,
    State,
    TestFrameConfirmed,
)
from .broadcasts import BroadcastLedger
from .limited_log import LimitedLog
from .stats import RelayStats, SiteStats
from .uplink_queue import Item, UplinkQueue

if TYPE_CHECKING:
    from .config import SiteConfig

log = logging.getLogger("concentrator.relay")

ConnId = int

# Reconnection to a site: first retry soon, then back off so a dead site costs little.
RETRY_MIN = 0.2
RETRY_MAX = 10.0
# BMI ASDUs for a site that is connecting or whose k window is full wait this many at
# most, and for at most the site's t1: later, the BMI has given up on them, and a command
# carried out that late would surprise everyone.
SITE_BACKLOG_LIMIT = 256
# Frames handled per call of receive_data: a peer's burst (64 KiB of TESTFR acts is 10,922
# frames) is handled in turns, so other connections are served in between.
FRAMES_PER_TURN = 1000


class CoreError(ConcentratorError):
    """The driver called the core in a way that cannot happen (a bug, not a peer's fault)."""


# ------------------------------------------------------------------------------ actions
# What the core forwarded in a Transmit, per ASDU: the statistic to record the relay's
# processing time with, and the time of the wake-up that let the ASDU go: the one that
# read it or, for one held meanwhile (no started connection to send it on, or the
# window full), the one that released it. Time held is the peers' (the BMI away, a site
# down, confirmations late: their own metrics), not the relay's work. The driver records
# the time once it wrote the bytes (`written_at - read_at`): only it knows when that was.
Forwarded = tuple[Callable[[float], None], float]


@dataclass(frozen=True, slots=True)
class Transmit:
    conn: ConnId
    data: bytes
    forwarded: tuple[Forwarded, ...] = ()  # the ASDUs relayed in `data` (none: the link's own frames)


@dataclass(frozen=True, slots=True)
class Close:
    conn: ConnId
    cause: Cause
    detail: str


@dataclass(frozen=True, slots=True)
class ConnectSite:
    site: int  # index in `RelayCore.sites`
    at: float


@dataclass(frozen=True, slots=True)
class TimerAt:
    at: float


Action = Transmit | Close | ConnectSite | TimerAt


class Tap(Protocol):
    """An observer of forwarded ASDUs (the MQTT mirror's queue, a monitor). Called on the
    hot path: each method must be O(1) (append to a bounded queue) and must not raise."""

    def up(self, site: str, asdu: bytes, now: float) -> None: ...

    def down(self, asdu: bytes, now: float) -> None: ...


class LinkTap(Protocol):
    """An observer of link states (the incident register): `site` None is the BMI; state
    "connected", "started" or "disconnected" (detail: the cause) for a site, "started" or
    "stopped" for the BMI. O(1), must not raise, like `Tap`."""

    def link(self, site: str | None, state: str, detail: str, now: float) -> None: ...


# ------------------------------------------------------------------------------ state
class Conn:
    """One connection the core knows: its link and its label. Either a `SiteConn` or a
    `BmiConn` (match on the class: the type checker narrows it)."""

    __slots__ = ("id", "link", "label", "closed", "forwarded")

    def __init__(self, conn_id: ConnId, link: Link, label: str) -> None:
        self.id = conn_id
        self.link = link
        self.label = label
        self.closed = False
        self.forwarded: list[Forwarded] = []  # ASDUs relayed onto this link since its last Transmit


class BmiConn(Conn):
    """A connection from the BMI (the uplink; the relay is the controlled station)."""

    __slots__ = ()


class SiteConn(Conn):
    """The connection to one site's UPDC (the relay is the controlling station)."""

    __slots__ = ("site", "outstanding", "last_item", "broadcasts")

    def __init__(self, conn_id: ConnId, link: Link, label: str, site: SiteState) -> None:
        super().__init__(conn_id, link, label)
        self.site = site
        # Frames of this connection in the uplink queue (pending or in flight), and the
        # newest of them, to which confirmations of frames that were not forwarded
        # (foreign CA) are attached.
        self.outstanding = 0
        self.last_item: Item[Conn] | None = None
        # The BMI's broadcasts sent on it and the answers still due.
        self.broadcasts = BroadcastLedger()


C = TypeVar("C", bound=Conn)


class SiteState:
    """One site: its configuration, connection, backlog of BMI ASDUs and counters."""

    def __init__(self, index: int, config: SiteConfig, now: float) -> None:
        self.index = index
        self.config = config
        self.name = config.name
        self.cas = frozenset(config.common_addresses)
        self.conn: SiteConn | None = None
        self.backlog: deque[tuple[bytes, float]] = deque()  # (BMI ASDU, when it arrived)
        self.retry = RETRY_MIN
        self.stats = SiteStats(config.name, tuple(config.common_addresses), state_since=now)


class RelayCore:
    def __init__(
        self,
        sites: Sequence[SiteConfig],
        uplink: LinkParams,
        now: float,
        *,
        allows: Callable[[str], bool] | None = None,
        max_uplinks: int | None = None,
        close_on_foreign_ca: bool = False,
        backlog_limit: int = SITE_BACKLOG_LIMIT,
    ) -> None:
        """`allows(peer) -> bool` filters BMI peers (None: everyone); `max_uplinks` is the
        ceiling on open BMI connections (None: no ceiling)."""
        self.uplink_params = uplink
        self.stats = RelayStats()
        self.queue: UplinkQueue[Conn] = UplinkQueue(turn=uplink.w)
        self.sites = [SiteState(n, site, now) for n, site in enumerate(sites)]
        for site in self.sites:
            self.stats.sites[site.name] = site.stats
        self._by_ca = {ca: site for site in self.sites for ca in site.cas}
        self._allows = allows
        self.max_uplinks = max_uplinks
        self.close_on_foreign_ca = close_on_foreign_ca
        self.backlog_limit = backlog_limit
        self.conns: dict[ConnId, Conn] = {}
        self.uplinks: dict[ConnId, BmiConn] = {}
        self.active: BmiConn | None = None
        self.taps: list[Tap] = []
        self.link_taps: list[LinkTap] = []
        self._next_id = 1
        self._actions: deque[Action] = deque()
        self._dirty: list[Conn] = []
        self._confirming: list[SiteConn] = []  # sites a BMI confirmation released S-frames to: flushed last
        self._timer_at = float("inf")
        self._log = LimitedLog()

    def start(self, now: float) -> None:
        """The relay starts (on the driver's clock): connect every site now."""
        for site in self.sites:
            site.stats.state_since = now
            self._actions.append(ConnectSite(site.index, now))

    # ------------------------------------------------------------------ driver API
    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)

    def add_link_tap(self, tap: LinkTap) -> None:
        self.link_taps.append(tap)

    def get_timer(self) -> float | None:
        """The earliest deadline of any link or backlog; None if there is none."""
        deadlines = [t for c in self.conns.values() if (t := c.link.get_timer()) is not None]
        for site in self.sites:
            if site.backlog:
                deadlines.append(site.backlog[0][1] + site.config.params.t1)
        if (summary := self._log.deadline()) is not None:
            deadlines.append(summary)
        self._timer_at = min(deadlines, default=float("inf"))
        return None if not deadlines else self._timer_at

    def handle_timer(self, now: float) -> None:
        for conn in list(self.conns.values()):
            deadline = conn.link.get_timer()
            if deadline is not None and deadline <= now and not conn.closed:
                conn.link.handle_timer(now)
                self._touch(conn)
                self._process(conn, now)
        for site in self.sites:
            self._expire_backlog(site, now)
        self._log.flush(now)
        self._flush()

    def uplink_accepted(self, peer: str, now: float) -> ConnId | None:
        """A BMI connection came in from `peer`: its id, or None if refused (the driver
        then closes it at once, with a reset)."""
        stats = self.stats.uplink
        if self._allows is not None and not self._allows(peer):
            stats.refused += 1
            stats.refused_by_reason["not_allowed"] += 1
            self._warn_refused(f"refused a BMI connection from {peer}: not in uplink.allowed_peers", now)
            return None
        if self.max_uplinks is not None and len(self.uplinks) >= self.max_uplinks:
            stats.refused += 1
            stats.refused_by_reason["limit"] += 1
            self._warn_refused(
                f"refused a BMI connection from {peer}: {len(self.uplinks)} open, uplink.max_connections reached", now
            )
            return None
        conn = self._add(BmiConn(self._next_id, Link(Role.CONTROLLED, self.uplink_params, now=now), f"BMI {peer}"))
        self.uplinks[conn.id] = conn
        stats.connections += 1
        stats.open_connections = len(self.uplinks)
        # Per peer through the limiter: an allowlisted peer reconnecting flat out wrote
        # 9,092 lines in 3.7 s (issue 29); the metrics count every connection.
        self._log.info(f"connected {peer}", now, "BMI %s connected (%d open)", peer, len(self.uplinks))
        self._announce_summary()
        self._announce_timer(conn)
        self._flush()
        return conn.id

    def site_connecting(self, site_index: int, now: float) -> None:
        self.sites[site_index].stats.set_state("connecting", now)

    def site_connect_failed(self, site_index: int, now: float) -> None:
        """No endpoint of the site answered: try again later, backing off."""
        site = self.sites[site_index]
        site.stats.set_state("disconnected", now)
        self._actions.append(ConnectSite(site_index, now + site.retry))
        site.retry = min(site.retry * 2, RETRY_MAX)

    def site_connected(self, site_index: int, endpoint: str, now: float) -> ConnId:
        site = self.sites[site_index]
        if site.conn is not None:
            raise CoreError(f"site {site.name} connected twice")
        site.retry = RETRY_MIN
        link = Link(Role.CONTROLLING, site.config.params, manual_ack=True, now=now)
        conn = self._add(SiteConn(self._next_id, link, f"site {site.name} ({endpoint})", site))
        site.conn = conn
        site.stats.endpoint = endpoint
        site.stats.connects += 1
        site.stats.set_state("connected", now)
        # Limited like its disconnect line: a UPDC that accepts and closes at once is
        # reconnected every RETRY_MIN.
        self._log.info(f"connected {site.name}", now, "site %s connected on %s", site.name, endpoint)
        self._announce_summary()
        for tap in self.link_taps:
            tap.link(site.name, "connected", endpoint, now)
        self._sync(site, now)
        self._announce_timer(conn)
        self._flush()
        return conn.id

    def receive_data(self, conn_id: ConnId, data: bytes | bytearray, now: float) -> bool:
        """Bytes read from a connection. True if frames are left for another turn: the
        driver lets other connections run, then calls again with b"" (FRAMES_PER_TURN)."""
        conn = self.conns.get(conn_id)
        if conn is None:  # already closed by the core; the driver had bytes in hand
            return False
        more = conn.link.receive_data(data, now, FRAMES_PER_TURN)
        self._touch(conn)
        self._process(conn, now)
        self._flush()
        return more and not conn.closed

    def connection_lost(self, conn_id: ConnId, cause: Cause, detail: str, now: float) -> None:
        conn = self.conns.get(conn_id)
        if conn is not None:
            self._forget(conn, cause, detail, now)
            self._flush()

    def close(self, conn_id: ConnId, cause: Cause, detail: str, now: float) -> None:
        """Close a connection on the driver's behalf (a fault met while serving it)."""
        conn = self.conns.get(conn_id)
        if conn is not None:
            self._close(conn, cause, detail, now)
            self._flush()

    # ------------------------------------------------------------------ events
    def _process(self, conn: Conn, now: float) -> None:
        match conn:
            case SiteConn():
                self._site_events(conn, now)
            case BmiConn():
                self._bmi_events(conn, now)

    def _site_events(self, conn: SiteConn, now: float) -> None:
        link, site = conn.link, conn.site
        while not conn.closed and (event := link.next_event()) is not None:
            match event:
                case AsduReceived():
                    self._site_asdu(conn, site, event.asdu, now)
                case Acknowledged():
                    self._drain(site, conn, now)
                case LinkFailed():
                    self._close(conn, event.cause, event.detail, now)
                case DataTransferStarted():
                    site.stats.set_state("started", now)
                    for tap in self.link_taps:
                        tap.link(site.name, "started", "", now)
                    self._drain(site, conn, now)
                case DataTransferStopped():
                    site.stats.set_state("connected", now)
                case TestFrameConfirmed():
                    site.stats.last_test_round_trip = event.round_trip

    def _bmi_events(self, conn: BmiConn, now: float) -> None:
        link = conn.link
        while not conn.closed and (event := link.next_event()) is not None:
            match event:
                case AsduReceived():
                    self._bmi_asdu(conn, event.asdu, now)
                case Acknowledged():
                    if conn is self.active:
                        self._bmi_confirmed(event.count, now)
                case LinkFailed():
                    self._close(conn, event.cause, event.detail, now)
                case DataTransferStarted():
                    self._activate(conn, now)
                case DataTransferStopped():
                    if conn is self.active:
                        self._uplink_lost(conn, now)
                case TestFrameConfirmed():
                    self.stats.uplink.last_test_round_trip = event.round_trip

    # ------------------------------------------------------------------ uplink side
    def _activate(self, conn: BmiConn, now: float) -> None:
        previous = self.active
        self.active = conn
        stats = self.stats.uplink
        stats.activations += 1
        stats.active_peer = conn.label
        if previous is None:
            log.info("%s started data transfer: starting the sites", conn.label)
            for tap in self.link_taps:
                tap.link(None, "started", conn.label, now)
            for site in self.sites:
                self._sync(site, now)
        else:
            # IEC 104 Ed. 2: a STARTDT on another connection moves the active role. The
            # old connection is closed (as lib60870 does), so that none of its late
            # confirmations counts against the new one; what it had not confirmed is
            # sent again on the new one, in order.
            # The relay's own answers to the old connection's commands are dropped, not
            # carried over: they answer commands the new connection never sent (README,
            # "Ed. 2 redundancy"). The sites' data is carried over, in order.
            in_flight = self.queue.in_flight
            dropped = self.queue.requeue_in_flight(drop=previous)
            stats.requeued += in_flight - dropped
            dropped += self.queue.discard_pending(previous)
            stats.answers_dropped += dropped
            log.info("active role moved from %s to %s: closing the old connection%s", previous.label, conn.label,
                     f", {dropped} of the relay's answers to its commands dropped" if dropped else "")  # fmt: skip
            self._close(previous, Cause.SUPERSEDED, f"STARTDT on {conn.label}", now)
        self._pump(now)

    def _uplink_lost(self, conn: BmiConn, now: float) -> None:
        """No started uplink connection is left. The sites are disconnected, so every UPDC
        keeps (and will send again) whatever the BMI did not confirm; the relay holds no
        copy that could go out twice."""
        log.warning("%s no longer started: disconnecting the sites until the BMI starts again", conn.label)
        for tap in self.link_taps:
            tap.link(None, "stopped", conn.label, now)
        self.active = None
        self.stats.uplink.active_peer = ""
        self.queue.clear()
        for site in self.sites:
            site.stats.dropped_down += len(site.backlog)
            site.backlog.clear()
            if site.conn is not None:
                self._close(site.conn, Cause.UPLINK_NOT_STARTED, f"{conn.label} no longer started", now)

    def _bmi_confirmed(self, count: int, now: float) -> None:
        items = self.queue.confirmed(count)
        released: dict[SiteConn, int] = {}
        for item in items:
            origin = item.origin
            if not isinstance(origin, SiteConn):  # the relay's own answer
                continue
            origin.outstanding -= 1
            if origin.last_item is item:
                origin.last_item = None
            if origin.closed:
                continue
            origin.site.stats.record_confirmed(now - item.sent_at)
            released[origin] = released.get(origin, 0) + 1 + item.extra
        for origin, count_released in released.items():
            origin.link.acknowledge(count_released, now)
            self._confirming.append(origin)
        self._pump(now)

    def _pump(self, now: float) -> None:
        active = self.active
        if active is None:
            return
        link = active.link
        sent = 0
        while link.can_send and (item := self.queue.take(now)) is not None:
            link.send_asdu(item.asdu, now)
            if isinstance(origin := item.origin, SiteConn):
                active.forwarded.append((origin.site.stats.record_forwarded, now))
            sent += 1
        if sent:
            self.stats.uplink.asdus_up += sent
            self._touch(active)

    def _bmi_asdu(self, conn: BmiConn, asdu: bytes, now: float) -> None:
        if conn is not self.active:
            return  # cannot happen: the link refuses I-frames unless started, and only the active one is
        try:
            ca = common_address(asdu)
        except AsduError as exc:
            self._close(conn, Cause.MALFORMED_ASDU, f"from the BMI: {exc}", now)
            return
        self.stats.uplink.asdus_down += 1
        for tap in self.taps:
            tap.down(asdu, now)
        if ca == BROADCAST_CA:
            for site in self.sites:
                self._send_down(site, asdu, now)
            return
        target = self._by_ca.get(ca)
        if target is not None:
            self._send_down(target, asdu, now)
            return
        # What a controlled station answers for a CA it does not have: the only ASDU
        # the concentrator ever originates.
        self.stats.uplink.negative_answers += 1
        self._log.warning("unknown ca", now, "BMI ASDU for unknown CA %d answered negatively (cause 46)", ca)
        self.queue.push(conn, negative_mirror(asdu))  # it belongs to `conn`: see _activate
        self._pump(now)

    # ------------------------------------------------------------------ site side
    def _site_asdu(self, conn: SiteConn, site: SiteState, asdu: bytes, now: float) -> None:
        if len(asdu) < HEADER_LENGTH:
            self._close(conn, Cause.MALFORMED_ASDU, f"{len(asdu)} octets", now)
            return
        if self.active is None:
            self._close(conn, Cause.UPLINK_NOT_STARTED, "data while the uplink is not started", now)
            return
        ca = asdu[4] | asdu[5] << 8
        if ca not in site.cas and not (ca == BROADCAST_CA and conn.broadcasts.answers(asdu)):
            self._foreign(conn, site, asdu, now)
            return
        item = self.queue.push(conn, asdu)
        conn.outstanding += 1
        conn.last_item = item
        site.stats.record_up(asdu, now)
        self._pump(now)
        for tap in self.taps:  # after the uplink got it: a tap never delays it
            tap.up(site.name, asdu, now)

    def _foreign(self, conn: SiteConn, site: SiteState, asdu: bytes, now: float) -> None:
        """A site's ASDU with a CA that is not one of the site's, and not an answer to a
        broadcast the BMI sent it (broadcasts.py): not forwarded (it would reach the BMI
        as another site's data, or as every site's). It is confirmed to the site in its turn,
        after the frames before it, so end-to-end acknowledgement stays in order."""
        ca = asdu[4] | asdu[5] << 8
        site.stats.foreign_ca += 1
        self._log.warning(
            f"foreign {site.name}",
            now,
            "site %s sent an ASDU (type %d, cause %d) with CA %d, not one of its CAs %s nor an answer to a "
            "broadcast sent to it: not forwarded",
            site.name,
            asdu[0],
            asdu[2] & 0x3F,
            ca,
            sorted(site.cas),
        )
        if self.close_on_foreign_ca:
            self._close(conn, Cause.FOREIGN_CA, f"ASDU with CA {ca}", now)
            return
        if conn.last_item is not None:
            conn.last_item.extra += 1
        else:
            conn.link.acknowledge(1, now)
            self._touch(conn)

    def _sync(self, site: SiteState, now: float) -> None:
        """Start data transfer if the uplink is started (sites are never stopped: losing
        the uplink disconnects them instead, see _uplink_lost)."""
        conn = site.conn
        if conn is not None and self.active is not None and conn.link.state is State.STOPPED:
            conn.link.start(now)
            self._touch(conn)

    def _send_down(self, site: SiteState, asdu: bytes, now: float) -> None:
        """Send now if the site is started and its window open, else wait in the backlog:
        a BMI that interrogates right after its STARTDT must reach a site that is still
        connecting (seen in tests: sites connecting after the BMI lost their interrogation)."""
        if len(site.backlog) >= self.backlog_limit:
            site.stats.dropped_down += 1
            self._log.warning(
                f"backlog {site.name}", now, "site %s backlog full: BMI ASDU type %d dropped", site.name, asdu[0]
            )
            return
        site.backlog.append((asdu, now))
        if len(site.backlog) == 1:
            self._announce(site.config.params.t1 + now)
        if site.conn is not None:
            self._drain(site, site.conn, now)

    def _drain(self, site: SiteState, conn: SiteConn, now: float) -> None:
        self._expire_backlog(site, now)
        link = conn.link
        backlog = site.backlog
        sent = 0
        while backlog and link.can_send:
            asdu, _ = backlog.popleft()
            link.send_asdu(asdu, now)
            if asdu[4] == 0xFF and asdu[5] == 0xFF:  # BROADCAST_CA: its answers are due now
                conn.broadcasts.sent(asdu)
            site.stats.record_down(asdu)
            conn.forwarded.append((site.stats.record_latency_down, now))
            sent += 1
        if sent:
            self._touch(conn)

    def _expire_backlog(self, site: SiteState, now: float) -> None:
        oldest = now - site.config.params.t1
        backlog = site.backlog
        while backlog and backlog[0][1] <= oldest:
            asdu, received_at = backlog.popleft()
            site.stats.dropped_down += 1
            self._log.warning(
                f"expired {site.name}",
                now,
                "site %s: BMI ASDU type %d dropped after waiting %.1f s",
                site.name,
                asdu[0],
                now - received_at,
            )

    # ------------------------------------------------------------------ connections
    def _add(self, conn: C) -> C:
        self._next_id += 1
        self.conns[conn.id] = conn
        return conn

    def _close(self, conn: Conn, cause: Cause, detail: str, now: float) -> None:
        """The core ends a connection: forget it and tell the driver to close it."""
        if conn.closed:
            return
        # What the link still has to say goes out first: confirmations released just
        # before (the BMI's last ones, before its STOPDT completed) must reach the site.
        data = conn.link.data_to_send()
        if data:
            self._actions.append(Transmit(conn.id, data))
        self._forget(conn, cause, detail, now)
        self._actions.append(Close(conn.id, cause, detail))

    def _forget(self, conn: Conn, cause: Cause, detail: str, now: float) -> None:
        if conn.closed:
            return
        conn.closed = True
        del self.conns[conn.id]
        match conn:
            case BmiConn():
                self._forget_bmi(conn, cause, detail, now)
            case SiteConn():
                self._forget_site(conn, cause, detail, now)

    def _forget_bmi(self, conn: BmiConn, cause: Cause, detail: str, now: float) -> None:
        del self.uplinks[conn.id]
        stats = self.stats.uplink
        stats.open_connections = len(self.uplinks)
        stats.disconnects[cause.value] += 1
        stats.last_close_reason = f"{cause.value}: {detail}"
        key = f"disconnected {conn.label}"
        self._log.info(key, now, "%s disconnected: %s: %s", conn.label, cause.value, detail)
        self._announce_summary()
        if conn is self.active:
            self._uplink_lost(conn, now)

    def _forget_site(self, conn: SiteConn, cause: Cause, detail: str, now: float) -> None:
        site = conn.site
        site.conn = None
        site.stats.set_state("disconnected", now)
        site.stats.disconnects[cause.value] += 1
        site.stats.last_close_reason = f"{cause.value}: {detail}"
        for tap in self.link_taps:
            tap.link(site.name, "disconnected", site.stats.last_close_reason, now)
        # Its frames not yet sent are dropped (the UPDC sends them again); those in flight
        # stay, so that the BMI's confirmations keep counting the right frames.
        self.queue.discard_pending(conn)
        # Nothing more arrives on it to attach to its last frame, which refers back to it:
        # kept, the pair is garbage only the cycle collector frees, and every uplink
        # outage closes all the sites at once.
        conn.last_item = None
        self._log.warning(
            f"disconnected {site.name}", now, "site %s disconnected: %s: %s", site.name, cause.value, detail
        )
        self._actions.append(ConnectSite(site.index, now + RETRY_MIN))

    def _touch(self, conn: Conn) -> None:
        """`conn`'s link may have bytes to send or a new deadline."""
        dirty = self._dirty
        if conn not in dirty:
            dirty.append(conn)

    def _flush(self) -> None:
        """Turn what the touched links have to send into Transmit actions: first the
        data (frames up, commands down), then the S-frames released to sites, so that a
        confirmation's write never delays a frame on its way (4-5 µs less one way down
        in ping-pong, bench/pingpong.py: a write is the relay's costliest step)."""
        dirty = self._dirty
        confirming = self._confirming
        if confirming:
            dirty.extend(conn for conn in confirming if conn not in dirty)
            confirming.clear()
        if not dirty:
            return
        actions = self._actions
        for conn in dirty:
            if conn.closed:
                continue
            data = conn.link.data_to_send()
            if data:
                actions.append(Transmit(conn.id, data, tuple(conn.forwarded)))
                conn.forwarded.clear()
            self._announce_timer(conn)
        dirty.clear()

    def _announce_timer(self, conn: Conn) -> None:
        deadline = conn.link.get_timer()
        if deadline is not None:
            self._announce(deadline)

    def _announce(self, deadline: float) -> None:
        if deadline < self._timer_at:
            self._timer_at = deadline
            self._actions.append(TimerAt(deadline))

    def _announce_summary(self) -> None:
        """The limiter may now owe a summary: make sure the driver wakes for it."""
        deadline = self._log.deadline()
        if deadline is not None:
            self._announce(deadline)

    def _warn_refused(self, message: str, now: float) -> None:
        self._log.warning("refused", now, "%s (%d refused so far)", message, self.stats.uplink.refused)
