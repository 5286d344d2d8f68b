"""The relay's metrics exporter, as a process of its own: one trio loop with limits.

Formatting a scrape is Python work (with prometheus_client's generate_latest about
60 ms for 100 sites, 700 kB of text), and in the relay's process it holds the GIL while
the relay waits for it after every system call: bench/scrape_stall.py measured p99 relay
latency going from 6 ms to 180 ms with one scrape a second. So the relay only pickles its
stats (a snapshot of plain numbers, about 1 ms in C for 100 sites, on a thread of its
own) when asked, and this process, niced, does the rest: HTTP on metrics.listen, the
exposition text (RelayMetrics.exposition) from the snapshot.

    relay process                                  this process
    RelayExporter thread   <-- b"s" -----------    scrape (one trio task per connection)
                           --- frame(pickle) -->   RelayMetrics(snapshot) -> text

The metrics port is reachable from the holder's network, so it is a peer like any other
(issue 29: 3,000 half-sent requests drove the old thread-per-connection server to 2,400
threads and 98 MB, and into the relay's log as 1,200 BrokenPipe tracebacks). Here:
- a connection that sends nothing is never accepted: the kernel holds it until its
  first byte (TCP_DEFER_ACCEPT) and drops it after `header_timeout`;
- at most `Limits.max_connections` open at once, and `max_per_peer` of one client address
  still sending their request head: a further connection from that address is reset at
  once, so that one attacking host cannot take the room of a Prometheus server
  elsewhere; when all are open, the oldest connection still sending its head makes room
  (a scraper sends its whole request at once, a slowloris never does); if every open
  connection is being answered, the new one is reset;
- a request head must arrive whole, at most `max_head` bytes, within `header_timeout`;
  an answer must be taken within `send_timeout`;
- the relay is asked for a snapshot at most once per `snapshot_interval`, however many
  clients ask: the others get the same text (Prometheus servers of an HA pair scrape at
  the same moment), followed by this process's own counters as of their answer;
- one request per connection (`Connection: close`); a client that goes away is met with
  silence: its connection is closed, nothing is logged.

Started by monitoring.exporter.serve_relay() as a sidecar (concentrator/sidecar.py: its
command line, at a lower priority) with one end of a socketpair as fd 3 (or --fd).
Messages are the sidecar's pickled messages. First the relay sends the setup
(configuration, listen address, clocks, its pid), and this process answers with the port
it bound (or the error). It exits when the relay goes away.

Pickles only ever travel between the relay and the process it started, over a
socketpair; nothing from the network is unpickled.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # what render_sites writes

from concentrator.relay.stats import RelayStats
from concentrator.sidecar import message, receive_message, receive_message_async

from .relay_metrics import RelayFile, RelayMetrics


@dataclass(frozen=True)
class Limits:
    """What one HTTP client may hold of this process (the defaults serve; tests shorten them)."""

    max_connections: int = 64  # open at once (a few Prometheus servers need one each)
    max_per_peer: int = 8  # of them still sending their request head, per client address
    header_timeout: float = 5.0  # seconds for a whole request head
    max_head: int = 8192  # bytes of request line and headers
    send_timeout: float = 10.0  # seconds for the client to take the whole answer
    snapshot_interval: float = 1.0  # seconds: at most one snapshot of the relay per interval


ACCEPT_BATCH = 256  # connections accepted in one turn of the loop
# SO_LINGER on, 0 s: close() sends a RST and keeps no TIME_WAIT (connections refused or dropped).
_RESET = struct.pack("ii", 1, 0)

SNAPSHOT_REQUEST = b"s"


@dataclass(frozen=True)
class Setup:
    """What the relay tells its exporter once, at start."""

    config: RelayFile
    host: str
    port: int
    started_at: float  # relay clock
    loaded_at: float  # Unix time
    relay_pid: int
    limits: Limits = Limits()


class Snapshots:
    """The exposition text of the relay's stats, from a snapshot taken at most once per
    `Limits.snapshot_interval`: clients asking meanwhile get the same text."""

    def __init__(self, sock: trio.socket.SocketType, setup: Setup) -> None:
        self.sock = sock
        self.setup = setup
        self.taken = 0  # snapshots asked of the relay
        self._lock = trio.Lock()  # one request on the socket at a time; others wait for its text
        self._body = b""
        self._taken_at = -float("inf")
        self._process = CollectorRegistry(auto_describe=False)
        # CPU and memory of the relay's process, not of this one.
        ProcessCollector(pid=lambda: str(setup.relay_pid), registry=self._process)

    async def exposition(self) -> bytes:
        async with self._lock:
            now = trio.current_time()
            if now - self._taken_at >= self.setup.limits.snapshot_interval:
                self._taken_at = now
                self.taken += 1
                await self.sock.send(SNAPSHOT_REQUEST)
                snapshot = await receive_message_async(self.sock)
                self._body = self._render(*snapshot)
            return self._body

    def _render(self, now: float, stats: RelayStats, states: dict[str, tuple[str, float, Any]]) -> bytes:
        assert isinstance(stats, RelayStats)
        for name, (state, since, before) in states.items():
            site = stats.sites[name]
            site.state, site.state_since, site.state_seconds, site.state_version = state, since, before, 0
        setup = self.setup
        collector = RelayMetrics(stats, setup.config, lambda: now, started_at=setup.started_at,
                                   loaded_at=setup.loaded_at)  # fmt: skip
        return collector.exposition() + generate_latest(self._process)


class _Connection:
    __slots__ = ("peer", "scope", "answering", "replied")

    def __init__(self, peer: str) -> None:
        self.peer = peer  # the client's address
        self.scope = trio.CancelScope()
        self.answering = False  # its request head is in: it is being answered
        self.replied = False  # a whole answer was sent: close with a FIN, not a reset


class HttpServer:
    """GET /metrics (or /) only, nothing here changes anything; with the limits above."""

    def __init__(self, listener: socket.socket, snapshots: Snapshots) -> None:
        self.limits = snapshots.setup.limits
        self.listener = listener
        self.snapshots = snapshots
        self.open: dict[_Connection, None] = {}  # oldest first
        self.closed = {"answered": 0, "dropped_for_room": 0, "refused_peer": 0, "refused_full": 0, "head_timeout": 0,
                       "bad_request": 0, "no_snapshot": 0, "send_timeout": 0, "client_gone": 0}  # fmt: skip

    async def serve(self) -> None:
        """Accept in batches: under a flood of connections the listen queue is drained fast
        (a full queue drops SYNs, and a scraper's connection waits 1 s for its retry).
        What a connection already sent is read at once: a scraper's whole request is
        usually there, so it is being answered before any room is made."""
        listener = self.listener
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(listener)
                for _ in range(ACCEPT_BATCH):
                    try:
                        client, address = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError:  # EMFILE, a connection reset before accept: nothing to log per peer
                        await trio.sleep(0.1)
                        break
                    self._accepted(nursery, client, str(address[0]))
                await trio.lowlevel.checkpoint()

    def _accepted(self, nursery: trio.Nursery, client: socket.socket, peer: str) -> None:
        client.setblocking(False)
        try:
            head = client.recv(self.limits.max_head + 1)
        except BlockingIOError:
            head = b""
        except OSError:
            self.closed["client_gone"] += 1
            _reset(client)
            return
        complete = b"\r\n\r\n" in head
        if not complete and sum(1 for c in self.open if c.peer == peer and not c.answering) >= self.limits.max_per_peer:
            # Refused at once, before a task exists: the cheapest answer to a flood.
            self.closed["refused_peer"] += 1
            _reset(client)
            return
        if len(self.open) >= self.limits.max_connections and not self._make_room():
            self.closed["refused_full"] += 1
            _reset(client)
            return
        connection = _Connection(peer)
        connection.answering = complete
        self.open[connection] = None
        nursery.start_soon(self._serve_one, client, connection, head)

    def _make_room(self) -> bool:
        """Close the oldest connection still sending its request head, if there is one."""
        for connection in self.open:
            if not connection.answering:
                self._drop(connection)
                return True
        return False

    def _drop(self, connection: _Connection) -> None:
        connection.scope.cancel()
        del self.open[connection]
        self.closed["dropped_for_room"] += 1

    async def _serve_one(self, client: socket.socket, connection: _Connection, head: bytes) -> None:
        outcome = "dropped_for_room"
        try:
            with connection.scope:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
                outcome = await self._answer(stream, connection, bytearray(head))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            outcome = "client_gone"
        finally:
            if connection in self.open:  # else _drop took it out and counted it
                del self.open[connection]
                self.closed[outcome] += 1
            if connection.replied:
                client.close()
            else:
                _reset(client)

    async def _answer(self, stream: trio.SocketStream, connection: _Connection, head: bytearray) -> str:
        limits = self.limits
        with trio.move_on_after(limits.header_timeout):
            while b"\r\n\r\n" not in head and len(head) <= limits.max_head:
                data = await stream.receive_some(limits.max_head + 1 - len(head))
                if not data:
                    return "client_gone"
                head += data
        if b"\r\n\r\n" not in head:
            return "head_timeout" if len(head) <= limits.max_head else "bad_request"
        connection.answering = True
        method, _, rest = bytes(head).partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        outcome, kind = "bad_request", b"text/plain"
        if method != b"GET":
            status, body = b"405 Method Not Allowed", b"GET only\n"
        elif path not in (b"/metrics", b"/"):
            status, body = b"404 Not Found", b"/metrics only\n"
        else:
            try:
                body = await self.snapshots.exposition()
                status, kind, outcome = b"200 OK", CONTENT_TYPE_PLAIN_0_0_4.encode(), "answered"
            except (OSError, EOFError) as exc:  # the relay is going away
                status, body, outcome = b"503 Service Unavailable", f"no snapshot: {exc}\n".encode(), "no_snapshot"
        # This exporter's own counters are as of now, not of the shared snapshot: a refusal
        # a moment ago is in the next answer.
        own = self.metrics() if outcome == "answered" else b""
        header = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        with trio.move_on_after(limits.send_timeout) as sending:
            await stream.send_all(header % (status, kind, len(body) + len(own)))
            await stream.send_all(body)  # not joined to the rest: every client shares this one copy
            await stream.send_all(own)
            connection.replied = True
        return "send_timeout" if sending.cancelled_caught else outcome

    def metrics(self) -> bytes:
        """This exporter's own: connections open and closed, snapshots taken."""
        lines = [
            "# HELP concentrator_exporter_connections HTTP connections open on the metrics port.",
            "# TYPE concentrator_exporter_connections gauge",
            f"concentrator_exporter_connections {len(self.open)}",
            "# HELP concentrator_exporter_closed_connections_total HTTP connections to the metrics port closed, "
            "by outcome (answered, or why not).",
            "# TYPE concentrator_exporter_closed_connections_total counter",
            *(f'concentrator_exporter_closed_connections_total{{outcome="{k}"}} {v}' for k, v in self.closed.items()),
            "# HELP concentrator_exporter_snapshots_total Snapshots of the relay's stats taken for scrapes.",
            "# TYPE concentrator_exporter_snapshots_total counter",
            f"concentrator_exporter_snapshots_total {self.snapshots.taken}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _reset(sock: socket.socket) -> None:
    """Close with a RST: no FIN handshake, no TIME_WAIT, nothing more to send or log."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    except OSError:
        pass
    sock.close()


async def _run(sock: socket.socket, listener: socket.socket, setup: Setup) -> None:
    snapshots = Snapshots(trio.socket.from_stdlib_socket(sock), setup)
    listener.setblocking(False)
    server = HttpServer(listener, snapshots)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        # Exit with the relay: when it stops, or dies without closing, we are re-parented.
        while os.getppid() == setup.relay_pid:
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()


def listen(host: str, port: int, header_timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Accept a connection only once it has sent something: half-open connections then
        # cost this process nothing (the kernel drops them after the timeout).
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, round(header_timeout)))
        listener.bind((host, port))
        listener.listen(1024)  # a burst of connections waits here rather than being dropped (SYN retried after 1 s)
    except OSError:
        listener.close()
        raise
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the relay's metrics exporter (started by the relay)")
    parser.add_argument("--fd", type=int, default=3, help="our end of the socketpair to the relay")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the relay stops us itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    setup = receive_message(sock)
    assert isinstance(setup, Setup)
    try:
        listener = listen(setup.host, setup.port, setup.limits.header_timeout)
    except OSError as exc:
        sock.sendall(message(f"cannot listen on {setup.host}:{setup.port}: {exc}"))
        return 1
    sock.sendall(message(int(listener.getsockname()[1])))
    trio.run(_run, sock, listener, setup)
    return 0
