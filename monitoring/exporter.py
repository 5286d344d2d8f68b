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

from concentrator.configbase import Endpoint
from concentrator.relay.stats import RelayStats
from concentrator.sidecar import Backoff, command, message, receive_message

from .relay_metrics import RelayFile
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
    for the pickling only (about 1.5 ms for 100 sites, in C).

    A process that goes away is started again by the same thread, on the port the first
    one listened on (the kernel's choice when asked for port 0), after the delay of
    `restart_policy()` (concentrator/sidecar.py's Backoff, as every feature's child)."""

    def __init__(
        self,
        stats: RelayStats,
        config: RelayFile,
        now: Callable[[], float],
        listen: Endpoint,
        limits: Limits | None = None,
        policy: Backoff | None = None,
    ) -> None:
        self.stats = stats
        self.config = config
        self.now = now
        self.limits = limits or Limits()
        self.policy = policy or self.restart_policy()
        self.snapshots = 0  # pickled for the exporter
        self.host, self.port = listen.host, listen.port
        self._lock = threading.Lock()  # close() against a restart under way
        self._closing = threading.Event()
        self._start()
        self._thread = threading.Thread(target=self._serve, name="metrics-snapshots", daemon=True)
        self._thread.start()

    @staticmethod
    def restart_policy() -> Backoff:
        """Doubling from 1 s to a minute: a process that cannot bind its port (another
        process took it meanwhile) would fail again at once."""
        return Backoff()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def _start(self) -> None:
        """Start the process and wait until it listens; OSError if it cannot."""
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                command("monitoring.scrape_process", "--fd", str(theirs.fileno())),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        try:
            setup = Setup(self.config, self.host, self.port, self.now(), time.time(), os.getpid(), self.limits)
            ours.sendall(message(setup))
            answer = receive_message(ours)  # waits for the process to start (a few 100 ms)
        except (OSError, EOFError) as exc:
            _stop(process, ours)
            raise OSError(f"metrics exporter process did not start: {exc}") from exc
        if not isinstance(answer, int):
            _stop(process, ours)
            raise OSError(f"metrics exporter: {answer}")
        self.port = answer  # a restart binds it again
        self._sock, self.process = ours, process
        self.policy.started(time.monotonic())

    def _serve(self) -> None:
        while True:
            self._answer()
            if self._closing.is_set():
                return
            delay = self.policy.exited(time.monotonic())
            log.error("metrics exporter process went away (exit status %s): started again in %.1f s",
                      self.process.poll(), delay)  # fmt: skip
            while not self._closing.wait(delay):
                with self._lock:
                    if self._closing.is_set():
                        return
                    _stop(self.process, self._sock)
                    try:
                        self._start()
                    except OSError as exc:
                        delay = self.policy.exited(time.monotonic())
                        log.error("%s: tried again in %.1f s", exc, delay)
                        continue
                log.warning("metrics exporter process started again (pid %d) on %s", self.process.pid, self.url)
                break

    def _answer(self) -> None:
        """Snapshots for the process, until it goes away or close()."""
        try:
            while self._sock.recv(1) == SNAPSHOT_REQUEST:
                # Each site's state fields through the seqlock (pickling reads them without
                # it), then the time, so that no state in the snapshot begins after it.
                states = {name: site.state_snapshot() for name, site in list(self.stats.sites.items())}
                self._sock.sendall(message((self.now(), self.stats, states)))
                self.snapshots += 1
        except OSError:
            pass

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv()
            _stop(self.process, self._sock)


def _stop(process: subprocess.Popen[bytes], sock: socket.socket) -> None:
    sock.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_relay(
    stats: RelayStats,
    config: RelayFile,
    listen: Endpoint | None = None,
    limits: Limits | None = None,
    policy: Backoff | None = None,
) -> RelayExporter:
    """The relay's exporter on `listen` (default: the configuration's metrics.listen), in
    a process of its own. Call it inside trio.run, from the relay's thread (relay_clock()).
    Raises OSError if it cannot listen there."""
    return RelayExporter(stats, config, relay_clock(), listen or config.metrics.listen, limits, policy)
