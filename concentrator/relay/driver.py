"""The relay's trio driver: sockets and time around `RelayCore` (core.py).

Every decision (routing, end-to-end acknowledgement, the Ed. 2 active role, backlogs,
when to connect a site) is the core's; this module only moves bytes and reads the
clock, the way trio's `SSLStream` drives the SSL object. One task per connection reads
(wait until readable, one `os.read`) and hands the bytes to the core; the core's
`Transmit` actions are written at once with one non-blocking `os.write` per touched
connection, from the reader's task, so a chunk of site frames leaves on the uplink as
one write and a BMI confirmation releases the sites' S-frames at once. A connection's
writer task takes over only when its socket would block. One timer task sleeps until
the core's next deadline. See README, "Architecture".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
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
    LinkTap,
    RelayCore,
    SiteConn,
    SiteState,
    Tap,
    TimerAt,
    Transmit,
)
from .fdio import write_all
from .limited_log import LimitedLog
from .stats import Buffers
from .windows import budget

log = logging.getLogger("concentrator.relay")  # the name the logs have always had

# How often a connection whose peer does not read checks whether the peer still sends
# (the budgets: concentrator/relay/windows.py).
PAUSED_CHECK = 0.05
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
        """Carry out what the core decided."""
        core = self.core
        while (action := core.next_action()) is not None:
            match action:
                case Transmit():
                    connection = self._connections.get(action.conn)
                    if connection is not None:
                        connection.send(action.data)
                case TimerAt():
                    if action.at < self._timer_at:
                        self._timer_wake.set()
                case Close():
                    connection = self._connections.pop(action.conn, None)
                    if connection is not None:
                        connection.close()
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
            # trio.SocketStream sets TCP_NODELAY itself (frames are small, latency matters),
            # ignoring the error of a socket already reset by its peer.
            self._serve(conn_id, trio.SocketStream(client))
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
            self._serve(conn_id, stream)
            self._act()
            return
        self.core.site_connect_failed(index, trio.current_time())
        self._act()

    def _serve(self, conn_id: ConnId, stream: trio.abc.Stream) -> None:
        conn = self.core.conns[conn_id]
        size = budget(conn.link.params.k)
        buffers = Buffers(send_budget=size, receive_budget=size)
        match conn:
            case SiteConn():
                conn.site.stats.buffers = buffers
            case BmiConn():
                self.stats.uplink.buffers[conn_id] = buffers
        connection = Connection(self, conn_id, stream, buffers)
        self._connections[conn_id] = connection
        assert self._nursery is not None
        self._nursery.start_soon(connection.run)

    def _ended(self, connection: Connection, cause: Cause, detail: str) -> None:
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]
        self.core.connection_lost(connection.id, cause, detail, trio.current_time())
        self._act()

    def _forget_buffers(self, connection: Connection) -> None:
        connection.buffers.send_buffered = connection.buffers.receive_buffered = 0
        self.stats.uplink.buffers.pop(connection.id, None)


class Connection:
    """One socket: reads into the core, writes what the core transmits."""

    def __init__(self, relay: Relay, conn_id: ConnId, stream: trio.abc.Stream, buffers: Buffers) -> None:
        self.relay = relay
        self.id = conn_id
        self.stream = stream
        self.buffers = buffers
        self._link = relay.core.conns[conn_id].link
        # The os.read/os.write fast path needs the file descriptor; other streams (memory
        # streams in tests) go through receive_some/send_all.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._unsent = bytearray()
        self._sending = False
        self._wake = trio.Event()
        self._drained = trio.Event()  # set when the writer has nothing left
        self._scope = trio.CancelScope()

    def send(self, data: bytes) -> None:
        """Write now if the socket takes it without blocking; the writer task sends the
        rest, in order, before anything newer, within the send budget."""
        if not (self._sending or self._unsent or self._fd < 0):
            try:
                written = os.write(self._fd, data)
            except OSError:  # BlockingIOError, or the writer meets the error again and ends it
                written = 0
            if written == len(data):
                return
            data = data[written:]
        unsent = self._unsent
        unsent += data
        self._wake.set()
        buffers = self.buffers
        buffers.send_buffered = len(unsent)
        if len(unsent) > buffers.send_budget:
            detail = f"{len(unsent)} bytes unread by the peer, budget {buffers.send_budget}"
            self.relay.core.close(self.id, Cause.SEND_BUDGET_EXCEEDED, detail, trio.current_time())

    def close(self) -> None:
        """The core closed this connection: stop serving it."""
        self._scope.cancel()

    async def run(self) -> None:
        cause, detail = Cause.SHUTDOWN, "relay stopped"
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write)
                    await self._read()
                    nursery.cancel_scope.cancel()
                cause, detail = Cause.PEER_CLOSED, "closed by peer"
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            cause, detail = Cause.CONNECTION_ERROR, repr(_first(group))
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            self.relay._forget_buffers(self)
            if not self._scope.cancelled_caught:
                self.relay._ended(self, cause, detail)

    async def _read(self) -> None:
        """Until the peer closes (returns) or the socket fails (raises)."""
        relay, core, fd = self.relay, self.relay.core, self._fd
        buffers = self.buffers
        size = buffers.receive_budget
        link = self._link
        data: bytes | bytearray
        while True:
            if (self._sending or self._unsent) and not await self._paused():
                return
            if fd >= 0:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, size)
                except BlockingIOError:
                    continue
            else:
                data = await self.stream.receive_some(size)
            if not data:
                return
            while True:
                now = trio.current_time()
                try:
                    more = core.receive_data(self.id, data, now)
                except Exception:
                    # A bug met on one connection must not take the others down with it.
                    log.exception("connection %d: handling received data failed; closing it", self.id)
                    core.close(self.id, Cause.INTERNAL_ERROR, "handling received data failed", now)
                    more = False
                relay._act()
                if not more:
                    break
                await trio.lowlevel.checkpoint()  # the rest of a burst after the others' turn
                data = b""
            buffers.receive_buffered = link.buffered_input

    async def _paused(self) -> bool:
        """The peer has not read what we sent: read (and answer) no more of it until it
        has. False if it sent a receive budget meanwhile: closed, sending without reading."""
        budget = self.buffers.receive_budget
        while self._sending or self._unsent:
            self._drained = trio.Event()
            with trio.move_on_after(PAUSED_CHECK):
                await self._drained.wait()
            still = self._sending or self._unsent
            if still and self._fd >= 0 and (waiting := _readable(self._fd)) > budget:
                detail = f"{waiting} bytes sent while not reading ours, budget {budget}"
                self.relay.core.close(self.id, Cause.RECEIVE_BUDGET_EXCEEDED, detail, trio.current_time())
                self.relay._act()
                return False
        return True

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._sending = True
            try:
                while self._unsent:
                    data = bytes(self._unsent)
                    self._unsent.clear()
                    if self._fd < 0:
                        await self.stream.send_all(data)
                    else:
                        await write_all(self._fd, data)
            finally:
                self._sending = False
                self.buffers.send_buffered = len(self._unsent)
                self._drained.set()


def _readable(fd: int) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
