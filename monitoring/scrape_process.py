"""The relay's metrics exporter, as a process of its own.

Formatting a scrape is Python work (with prometheus_client's generate_latest about
60 ms for 100 sites, 700 kB of text), and in the relay's process it holds the GIL while
the relay waits for it after every system call: bench/scrape_stall.py measured p99 relay
latency going from 6 ms to 180 ms with one scrape a second. So the relay only pickles its
stats (a snapshot of plain numbers, about 1 ms in C for 100 sites, on a thread of its
own) when asked, and this process, niced, does the rest: HTTP on metrics.listen, the
exposition text (RelayMetrics.exposition) from the snapshot.

    relay process                                  this process
    RelayExporter thread   <-- b"s" -----------    scrape (HTTP thread)
                           --- frame(pickle) -->   RelayMetrics(snapshot) -> text

Started by monitoring.exporter.serve_relay() with one end of a socketpair as fd 3 (or
--fd). Messages are frames: 4-octet big-endian length, then a pickle. First the relay
sends the setup (configuration, listen address, clocks, its pid), and this process
answers with the port it bound (or the error). It exits when the relay goes away.

Pickles only ever travel between the relay and the process it started, over a
socketpair; nothing from the network is unpickled.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import socketserver
import struct
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # what render_sites writes

from concentrator.config import Config
from concentrator.stats import RelayStats

from .relay_metrics import RelayMetrics

SNAPSHOT_REQUEST = b"s"
_LENGTH = struct.Struct(">I")


def send_frame(sock: socket.socket, payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive_frame(sock: socket.socket) -> Any:
    (length,) = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))
    return pickle.loads(_receive_exactly(sock, length))  # noqa: S301 (from our own parent only)


@dataclass(frozen=True)
class Setup:
    """What the relay tells its exporter once, at start."""

    config: Config
    host: str
    port: int
    started_at: float  # relay clock
    loaded_at: float  # Unix time
    relay_pid: int


class Snapshots:
    """One snapshot of the relay's stats per scrape, rendered as exposition text."""

    def __init__(self, sock: socket.socket, setup: Setup) -> None:
        self.sock = sock
        self.setup = setup
        self._lock = threading.Lock()  # one request on the socket at a time (scrapes may overlap)
        self._process = CollectorRegistry(auto_describe=False)
        # CPU and memory of the relay's process, not of this one.
        ProcessCollector(pid=lambda: str(setup.relay_pid), registry=self._process)

    def exposition(self) -> bytes:
        with self._lock:
            self.sock.sendall(SNAPSHOT_REQUEST)
            now, stats, states = receive_frame(self.sock)
        assert isinstance(stats, RelayStats)
        for name, (state, since, before) in states.items():
            site = stats.sites[name]
            site.state, site.state_since, site.state_seconds, site.state_version = state, since, before, 0
        setup = self.setup
        collector = RelayMetrics(stats, setup.config, lambda: now, started_at=setup.started_at,
                                   loaded_at=setup.loaded_at)  # fmt: skip
        return collector.exposition() + generate_latest(self._process)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics only: nothing here changes anything."""

    snapshots: Snapshots
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        try:
            body = self.snapshots.exposition()
        except (OSError, EOFError) as exc:  # the relay is going away
            self.send_error(503, f"no snapshot from the relay: {exc}")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per scrape would flood the relay's log


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    # Not http.server.HTTPServer: its server_bind() looks the host name up (getfqdn).
    allow_reuse_address = True
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the relay's metrics exporter (started by the relay)")
    parser.add_argument("--fd", type=int, default=3, help="our end of the socketpair to the relay")
    args = parser.parse_args(argv)
    # Formatting costs CPU (tens of ms per scrape for 100 sites): on a busy machine the
    # relay must get the CPU first.
    os.nice(10)
    # Ctrl-C in a terminal reaches the whole process group: the relay stops us itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    setup = receive_frame(sock)
    assert isinstance(setup, Setup)
    handler = type("Handler", (_Handler,), {"snapshots": Snapshots(sock, setup)})
    try:
        family = socket.AF_INET6 if ":" in setup.host else socket.AF_INET
        server_class = type("Server", (_Server,), {"address_family": family})
        server = server_class((setup.host, setup.port), handler)
    except OSError as exc:
        send_frame(sock, f"cannot listen on {setup.host}:{setup.port}: {exc}")
        return 1
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    send_frame(sock, int(server.server_address[1]))
    # Exit with the relay: when it stops, or dies without closing, we are re-parented.
    while os.getppid() == setup.relay_pid:
        threading.Event().wait(0.5)
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module, not __main__'s: the pickles name the
    # classes as monitoring.scrape_process.Setup, which must be the class checked here.
    from monitoring.scrape_process import main as package_main

    sys.exit(package_main())
