"""The relay's trio driver: sockets and time around `RelayCore` (core.py).

Every decision (routing, end-to-end acknowledgement, the Ed. 2 active role, backlogs,
when to connect a site) is the core's; this module only moves bytes and reads the
clock, the way trio's `SSLStream` drives the SSL object.

One wake-up serves every ready socket. The I/O task owns a level-triggered
`select.epoll` holding every connection's socket and waits on it through trio
(`trio.lowlevel.wait_readable` on the epoll's own descriptor): trio stays the event loop
and runs the relay's other tasks (accepting, connecting, the timer, the features'
runners) beside it. Each round takes the ready sockets in one `poll`, gives each one read
(at most its receive budget) and one turn of the core (at most FRAMES_PER_TURN frames;
the rest of a burst waits for the next round, after every other ready connection had
its turn), then writes every connection the round touched once, with everything the core
produced for it (data and S-frames together). Only a socket that would block is watched
for writability, and its peer is not read until it took what waits for it (the budgets,
concentrator/relay/windows.py). One timer task sleeps until the core's next deadline.
See README, "Architecture".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import select
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ..configbase import os_failure
from ..iec104.errors import Cause
from .config import SiteConfig, UplinkConfig
from .core import (
    BmiConn,
    Close,
    ConnectSite,
    ConnId,
    Forwarded,
    LinkTap,
    RelayCore,
    SiteConn,
    SiteState,
    Tap,
    TimerAt,
    Transmit,
)
from .limited_log import LimitedLog
from .stats import Buffers
from .windows import budget

log = logging.getLogger("concentrator.relay")  # the name the logs have always had

# How often a connection whose peer does not read checks whether the peer still sends
# (the budgets: concentrator/relay/windows.py).
PAUSED_CHECK = 0.05
# Ready sockets taken per round at most; the others are still ready (level-triggered) and
# come first in the next round (epoll moves the ones it returned to the back).
MAX_EVENTS = 512
# SO_LINGER on, 0 s: close() sends a RST and keeps no TIME_WAIT (refused connections).
_RESET = struct.pack("ii", 1, 0)


class RelaySections(Protocol):
    """What the relay reads of the configuration: its own sections and the file's name
    (the whole file's `Config` is one)."""

    @property
    def file(self) -> str: ...

    @property
    def uplink(self) -> UplinkConfig: ...

    @property
    def sites(self) -> tuple[SiteConfig, ...]: ...


class Relay:
    """The relay knows nothing of the features that watch it: the wiring layer
    (concentrator/cli.py `feature_relay`) hands it their taps and the tasks that feed
    their processes, started in the relay's nursery."""

    def __init__(
        self,
        config: RelaySections,
        *,
        taps: Sequence[Tap] = (),
        link_taps: Sequence[LinkTap] = (),
        runners: Sequence[Callable[[], Awaitable[None]]] = (),
        source_address: str | None = None,
    ) -> None:
        self.config = config
        self.core = RelayCore(
            config.sites,
            config.uplink.params,
            0.0,  # the clock starts in run(); see RelayCore.start
            allows=config.uplink.allows,
            max_uplinks=config.uplink.max_connections,
            close_on_foreign_ca=config.uplink.close_on_foreign_ca,
        )
        self.stats = self.core.stats
        self.listen_port = 0
        self._connections: dict[ConnId, Connection] = {}
        self._nursery: trio.Nursery | None = None
        self._timer_at = math.inf
        self._timer_wake = trio.Event()
        self._log = LimitedLog()
        # The I/O task's state (_rounds): every connection's socket, by descriptor; the
        # connections with bytes for this round's writes; those with frames left from
        # their last turn; those waiting for their socket to take what it did not.
        self._epoll = select.epoll()
        self._by_fd: dict[int, Connection] = {}
        self._writing: list[Connection] = []
        self._leftover: list[Connection] = []
        self._paused: set[Connection] = set()
        self._next_check = math.inf
        # In an HA pair the sites are reached from the sites' virtual address only: a relay
        # on the appliance that does not hold it cannot connect (docs/ha.md).
        self.source_address = source_address
        for tap in taps:
            self.core.add_tap(tap)
        for link_tap in link_taps:
            self.core.add_link_tap(link_tap)
        self._runners = tuple(runners)

    @property
    def sites(self) -> list[SiteState]:
        """The core's per-site state (name, stats, connection)."""
        return self.core.sites

    @property
    def active(self) -> BmiConn | None:
        """The core's active BMI connection, or None."""
        return self.core.active

    async def run(self, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED) -> None:
        listen = self.config.uplink.listen
        try:
            listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
        except OSError as exc:  # busy, foreign, not permitted: one line, its exit status (cli)
            raise os_failure(exc, f"{self.config.file}: uplink.listen", f"listening on {listen}") from None
        self.listen_port = listeners[0].socket.getsockname()[1]
        log.info("listening for the BMI on %s:%d", listen.host, self.listen_port)
        async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
            for listener in listeners:
                stack.push_async_callback(listener.aclose)
            self._nursery = nursery
            nursery.start_soon(self._rounds)
            for listener in listeners:
                nursery.start_soon(self._accept, listener)
            nursery.start_soon(self._timers)
            self.core.start(trio.current_time())
            self._act()
            for runner in self._runners:  # the features' processes (mirror, shedding, incidents)
                nursery.start_soon(runner)
            task_status.started(self)

    # ------------------------------------------------------------------ actions
    def _act(self) -> None:
        """Carry out what the core decided, and write what it produced: each connection
        once, with all of it. Writing can make the core decide more (a peer gone, a
        budget exceeded): carried out in turn."""
        while True:
            self._take_actions()
            writing = self._writing
            if not writing:
                return
            self._writing = []
            forwarded = False
            for connection in writing:
                connection.write_round()
                forwarded = forwarded or bool(connection.forwarded)
            if forwarded:
                written_at = trio.current_time()
                for connection in writing:
                    for record, read_at in connection.forwarded:
                        record(written_at - read_at)
                    connection.forwarded.clear()

    def _take_actions(self) -> None:
        core = self.core
        while (action := core.next_action()) is not None:
            match action:
                case Transmit():
                    connection = self._connections.get(action.conn)
                    if connection is not None:
                        if not connection.round:
                            self._writing.append(connection)
                        connection.round.append(action.data)
                        if action.forwarded:
                            connection.forwarded.extend(action.forwarded)
                case TimerAt():
                    if action.at < self._timer_at:
                        self._timer_wake.set()
                case Close():
                    connection = self._connections.get(action.conn)
                    if connection is not None:
                        if connection.round:  # its last words (the link's own frames) go first
                            connection.write_round()
                        self._detach(connection)
                case ConnectSite():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._connect_site, action.site, action.at)

    async def _timers(self) -> None:
        while True:
            deadline = self.core.get_timer()
            self._timer_at = math.inf if deadline is None else deadline
            with trio.move_on_at(self._timer_at):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            now = trio.current_time()
            if now >= self._timer_at:
                self.core.handle_timer(now)
                self._act()

    # ------------------------------------------------------------------ rounds
    async def _rounds(self) -> None:
        """The I/O task: one round per wake-up, every ready socket served in it."""
        epoll = self._epoll
        fd, poll, wait_readable = epoll.fileno(), epoll.poll, trio.lowlevel.wait_readable
        try:
            while True:
                if self._leftover:  # frames wait in the relay: only let the other tasks run
                    await trio.lowlevel.checkpoint()
                elif self._paused:  # look at the peers that do not read every PAUSED_CHECK
                    with trio.move_on_at(self._next_check):
                        await wait_readable(fd)
                else:
                    await wait_readable(fd)
                self._round(poll(0, MAX_EVENTS))
                if self._paused and trio.current_time() >= self._next_check:
                    self._check_paused()
        finally:
            now = trio.current_time()
            for connection in list(self._connections.values()):
                self._lost(connection, Cause.SHUTDOWN, "relay stopped", now)
            self._take_actions()
            epoll.close()

    def _round(self, events: list[tuple[int, int]]) -> None:
        now = trio.current_time()
        leftover, self._leftover = self._leftover, []
        for connection in leftover:  # the rest of a burst, before anything newer of it
            if not connection.closed:
                connection.turn(b"", now)
        by_fd, paused = self._by_fd, self._paused
        for fd, _ in events:
            ready = by_fd.get(fd)
            if ready is None or ready.closed or (leftover and ready in leftover):
                continue  # gone this round, or had its turn already
            if ready in paused:  # writable again, or failed (EPOLLERR, EPOLLHUP)
                ready.drain()
            else:
                ready.read(now)
        self._act()

    def _pause(self, connection: Connection) -> None:
        """Its socket is full: watch it for writability, and stop reading its peer."""
        if not self._paused:
            self._next_check = trio.current_time() + PAUSED_CHECK
        self._paused.add(connection)
        with contextlib.suppress(OSError):  # an fd already closed: its read or write says why
            self._epoll.modify(connection.fd, select.EPOLLOUT)

    def _resume(self, connection: Connection) -> None:
        self._paused.discard(connection)
        with contextlib.suppress(OSError):
            self._epoll.modify(connection.fd, select.EPOLLIN)

    def _check_paused(self) -> None:
        """A peer that has not read what we sent may not send more than its receive
        budget meanwhile: closed if it did (it sends without reading)."""
        now = trio.current_time()
        self._next_check = now + PAUSED_CHECK
        for connection in list(self._paused):
            limit = connection.buffers.receive_budget
            try:
                waiting = _readable(connection.fd)
            except OSError:
                continue  # its drain meets the same error and ends it
            if waiting > limit:
                detail = f"{waiting} bytes sent while not reading ours, budget {limit}"
                self.core.close(connection.id, Cause.RECEIVE_BUDGET_EXCEEDED, detail, now)
        self._act()

    # ------------------------------------------------------------------ connections
    async def _accept(self, listener: trio.SocketListener) -> None:
        """Accept BMI connections. A refused one costs the accept and a reset: no task,
        no buffer, no TIME_WAIT."""
        sock = listener.socket
        while True:
            try:
                client, address = await sock.accept()
            except OSError as exc:  # e.g. EMFILE, or a connection reset before accept
                self._log.warning("accept", trio.current_time(), "accepting a BMI connection failed: %r", exc)
                await trio.sleep(0.1)
                continue
            conn_id = self.core.uplink_accepted(str(address[0]), trio.current_time())
            if conn_id is None:
                with contextlib.suppress(OSError):  # already reset by the peer: nothing to add
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                client.close()
                continue
            with contextlib.suppress(OSError):  # frames are small, latency matters; reset already: its read says so
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(conn_id, client)
            self._act()

    async def _connect_site(self, index: int, at: float) -> None:
        await trio.sleep_until(at)
        site = self.core.sites[index]
        self.core.site_connecting(index, trio.current_time())
        for endpoint in site.config.endpoints:
            try:
                with trio.fail_after(site.config.params.t0):
                    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port, local_address=self.source_address)
            except (OSError, trio.TooSlowError) as exc:
                log.debug("site %s: %s unreachable: %r", site.name, endpoint, exc)
                continue
            conn_id = self.core.site_connected(index, str(endpoint), trio.current_time())
            self._serve(conn_id, stream.socket)  # TCP_NODELAY set by trio.SocketStream
            self._act()
            return
        self.core.site_connect_failed(index, trio.current_time())
        self._act()

    def _serve(self, conn_id: ConnId, sock: trio.socket.SocketType) -> None:
        conn = self.core.conns[conn_id]
        size = budget(conn.link.params.k)
        buffers = Buffers(send_budget=size, receive_budget=size)
        match conn:
            case SiteConn():
                conn.site.stats.buffers = buffers
            case BmiConn():
                self.stats.uplink.buffers[conn_id] = buffers
        connection = Connection(self, conn_id, sock, buffers)
        self._connections[conn_id] = connection
        self._by_fd[connection.fd] = connection
        self._epoll.register(connection.fd, select.EPOLLIN)

    def _lost(self, connection: Connection, cause: Cause, detail: str, now: float) -> None:
        """The socket ended (the peer closed it, or an error): tell the core."""
        self._detach(connection)
        self.core.connection_lost(connection.id, cause, detail, now)

    def _detach(self, connection: Connection) -> None:
        """Close the socket and forget the connection and its buffers."""
        if connection.closed:
            return
        connection.closed = True
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]
        del self._by_fd[connection.fd]
        self._paused.discard(connection)
        with contextlib.suppress(OSError):
            self._epoll.unregister(connection.fd)
        connection.socket.close()
        connection.round.clear()
        connection.forwarded.clear()
        connection.buffers.send_buffered = connection.buffers.receive_buffered = 0
        self.stats.uplink.buffers.pop(connection.id, None)


class Connection:
    """One socket in the relay's epoll: what the core produced for it this round, what
    its socket did not take yet, and its turn of the core."""

    def __init__(self, relay: Relay, conn_id: ConnId, sock: trio.socket.SocketType, buffers: Buffers) -> None:
        self.relay = relay
        self.id = conn_id
        self.socket = sock  # holds the descriptor open
        self.fd = sock.fileno()
        self.buffers = buffers
        self._link = relay.core.conns[conn_id].link
        self.round: list[bytes] = []  # written once, at the end of the round
        self.forwarded: list[Forwarded] = []  # the ASDUs relayed in `round`: their latency
        self.more = False  # frames left from its turn, for the next round
        self.closed = False
        self._unsent = bytearray()

    def read(self, now: float) -> None:
        """One read, at most the receive budget, and the core's turn with it."""
        relay = self.relay
        try:
            data = os.read(self.fd, self.buffers.receive_budget)
        except BlockingIOError:
            return
        except OSError as exc:
            relay._lost(self, Cause.CONNECTION_ERROR, repr(exc), now)
            return
        if not data:
            relay._lost(self, Cause.PEER_CLOSED, "closed by peer", now)
            return
        self.turn(data, now)

    def turn(self, data: bytes, now: float) -> None:
        relay = self.relay
        core = relay.core
        try:
            more = core.receive_data(self.id, data, now)
        except Exception:
            # A bug met on one connection must not take the others down with it.
            log.exception("connection %d: handling received data failed; closing it", self.id)
            core.close(self.id, Cause.INTERNAL_ERROR, "handling received data failed", now)
            more = False
        self.more = more
        if more:
            relay._leftover.append(self)
        self.buffers.receive_buffered = self._link.buffered_input

    def write_round(self) -> None:
        round_ = self.round
        data = round_[0] if len(round_) == 1 else b"".join(round_)
        round_.clear()
        self.send(data)

    def send(self, data: bytes) -> None:
        """Write now if the socket takes it without blocking; what it does not take waits,
        in order, before anything newer, within the send budget, for the socket to drain."""
        if self.closed:
            return
        unsent = self._unsent
        if not unsent:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self.relay._lost(self, Cause.CONNECTION_ERROR, repr(exc), trio.current_time())
                return
            if written == len(data):
                return
            data = data[written:]
            self.relay._pause(self)
        unsent += data
        buffers = self.buffers
        buffers.send_buffered = len(unsent)
        if len(unsent) > buffers.send_budget:
            detail = f"{len(unsent)} bytes unread by the peer, budget {buffers.send_budget}"
            self.relay.core.close(self.id, Cause.SEND_BUDGET_EXCEEDED, detail, trio.current_time())

    def drain(self) -> None:
        """The socket is writable again (or failed): write what waits; once all of it is
        taken, read the peer again."""
        unsent = self._unsent
        try:
            written = os.write(self.fd, unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self.relay._lost(self, Cause.CONNECTION_ERROR, repr(exc), trio.current_time())
            return
        del unsent[:written]
        self.buffers.send_buffered = len(unsent)
        if not unsent:
            self.relay._resume(self)


def _readable(fd: int) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
