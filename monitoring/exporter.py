"""Serve the relay's metrics over HTTP, read-only, through a process of its own (other
collectors, the link manager's, are served by monitoring.primitives.serve in daemon threads).

Formatting holds the GIL, and in the relay's process that stalled the relay
(bench/SCRAPE.md): so the relay's metrics are formatted and served by another process,
from a snapshot (monitoring/scrape_process.py), which also bounds what HTTP clients may
hold (connections, time, snapshots: its `Limits`). The relay's side is one thread that
pickles a snapshot when asked, at most once per `Limits.snapshot_interval`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import trio

from concentrator.config import Config, Endpoint
from concentrator.relay.stats import RelayStats
from concentrator.sidecar import command, message, receive_message

from .scrape_process import SNAPSHOT_REQUEST, Limits, Setup

log = logging.getLogger(__name__)


def relay_clock() -> Callable[[], float]:
    """A function giving trio.current_time() from any thread. Call it inside trio.run.

    trio's SystemClock is `offset + time.perf_counter()` with a random offset per run, so
    the relay's timestamps cannot be compared with time.monotonic() directly; we measure
    the offset once. perf_counter() is read after current_time(), so the estimate trails
    the relay's clock by the time between the two reads (well under a microsecond): a
    scrape never sees a time before one the relay already stamped.
    """
    offset = trio.current_time() - time.perf_counter()
    return lambda: time.perf_counter() + offset


class RelayExporter:
    """The relay's side of its exporter process (monitoring/scrape_process.py): starts it,
    and answers each of its snapshot requests on a daemon thread with a pickle of the
    stats. The relay's event loop does nothing for a scrape; this thread holds the GIL
    for the pickling only (about 1.5 ms for 100 sites, in C)."""

    def __init__(
        self,
        stats: RelayStats,
        config: Config,
        now: Callable[[], float],
        listen: Endpoint,
        limits: Limits | None = None,
    ) -> None:
        self.stats = stats
        self.now = now
        self.snapshots = 0  # pickled for the exporter
        ours, theirs = socket.socketpair()
        self._sock = ours
        self._closing = False
        try:
            self.process = subprocess.Popen(
                command("monitoring.scrape_process", "--fd", str(theirs.fileno())),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        try:
            setup = Setup(config, listen.host, listen.port, now(), time.time(), os.getpid(), limits or Limits())
            ours.sendall(message(setup))
            answer = receive_message(ours)  # waits for the process to start (a few 100 ms, once)
        except (OSError, EOFError) as exc:
            self.close()
            raise OSError(f"metrics exporter process did not start: {exc}") from exc
        if not isinstance(answer, int):
            self.close()
            raise OSError(f"metrics exporter: {answer}")
        self.host, self.port = listen.host, answer
        self._thread = threading.Thread(target=self._serve, name="metrics-snapshots", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def _serve(self) -> None:
        try:
            while self._sock.recv(1) == SNAPSHOT_REQUEST:
                # Each site's state fields through the seqlock (pickling reads them without
                # it), then the time, so that no state in the snapshot begins after it.
                states = {name: site.state_snapshot() for name, site in list(self.stats.sites.items())}
                self._sock.sendall(message((self.now(), self.stats, states)))
                self.snapshots += 1
        except OSError:
            pass
        if not self._closing:
            log.error("metrics exporter process went away (exit status %s): no metrics until the relay restarts",
                      self.process.poll())  # fmt: skip

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv()
        self._sock.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve_relay(
    stats: RelayStats, config: Config, listen: Endpoint | None = None, limits: Limits | None = None
) -> RelayExporter:
    """The relay's exporter on `listen` (default: the configuration's metrics.listen), in
    a process of its own. Call it inside trio.run, from the relay's thread (relay_clock()).
    Raises OSError if it cannot listen there."""
    return RelayExporter(stats, config, relay_clock(), listen or config.metrics.listen, limits)
