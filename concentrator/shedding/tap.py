"""The relay's side of the compliance monitor: a tap and the feeder of the monitor process.

`ShedTap` is an observer of the relay with the generic tap interface:
`up(site, asdu, now)` for every site ASDU forwarded to the BMI and `down(asdu, now)` for
every BMI ASDU accepted from the active connection. Each call is a set lookup and an
append to a bounded deque (the oldest entry is dropped and counted when it is full): no
decoding, no waiting, nothing returned to the relay. `ShedFeeder` drains the deque every
FEED_PERIOD in a task of the relay's nursery and writes it to the monitor process
(process.py), which decodes, judges, records and serves metrics on the other core.

Frames to the child: first a pickle of the `SheddingConfig` (our pipe, nothing from the
network), then per ASDU: 4-octet big-endian length of what follows, 8-octet float wall
time, 1-octet site name length (0: a BMI ASDU), the name, the ASDU.
"""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import time
from collections import deque

import trio

from .config import SheddingConfig

log = logging.getLogger(__name__)

FEED_PERIOD = 0.05  # seconds: time stamps are taken at the tap, so this delay costs nothing
RESTART_DELAY = 1.0
RESTART_MAX = 60.0
HEAD = struct.Struct(">Id B")
# The child lowers its priority before importing anything: its start-up (imports of
# prometheus_client, sqlite3, the decoder) must not take the CPU from the relay either.
CHILD = "import os; os.nice(10); from concentrator.shedding.process import main; main()"
DROPPED = "!"  # site name of the frame that reports ASDUs the tap dropped (not a valid site name)


class ShedTap:
    def __init__(self, sites: frozenset[str], limit: int) -> None:
        self.sites = sites
        self.limit = limit
        self.entries: deque[tuple[str, bytes, float]] = deque()
        self.queued = 0
        self.dropped = 0

    def up(self, site: str, asdu: bytes, now: float) -> None:
        if site in self.sites:
            self._append((site, asdu, now))

    def down(self, asdu: bytes, now: float) -> None:
        self._append(("", asdu, now))

    def _append(self, entry: tuple[str, bytes, float]) -> None:
        entries = self.entries
        entries.append(entry)
        self.queued += 1
        if len(entries) > self.limit:
            entries.popleft()
            self.dropped += 1


def encode(site: str, asdu: bytes, wall: float) -> bytes:
    name = site.encode()
    return HEAD.pack(9 + len(name) + len(asdu), wall, len(name)) + name + asdu


def config_frame(config: SheddingConfig) -> bytes:
    payload = pickle.dumps(config)
    return struct.pack(">I", len(payload)) + payload


class ShedFeeder:
    """In the relay: starts the monitor process, feeds it from the tap, restarts it if it
    dies (the record continues: SQLite in WAL mode)."""

    def __init__(self, config: SheddingConfig, tap: ShedTap) -> None:
        self.config = config
        self.tap = tap
        self.restarts = 0

    async def run(self) -> None:
        delay = RESTART_DELAY
        while True:
            started = trio.current_time()
            try:
                await self._child()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("shedding monitor process: %s; restarting", exc)
            self.restarts += 1
            # A child that cannot start (e.g. no writable record directory) is retried
            # less and less often; one that ran for a while is restarted soon.
            if trio.current_time() - started > RESTART_MAX:
                delay = RESTART_DELAY
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _child(self) -> None:
        process = await trio.lowlevel.open_process([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            await process.stdin.send_all(config_frame(self.config))
            entries = self.tap.entries
            reported = self.tap.dropped
            while True:
                await trio.sleep(FEED_PERIOD)
                if process.poll() is not None:
                    raise trio.BrokenResourceError(f"exited with status {process.returncode}")
                # The relay's clock is monotonic; the record wants the wall clock. The
                # offset is read per batch, so a slewed or stepped clock is followed.
                offset = time.time() - trio.current_time()
                chunks = []
                while entries:
                    site, asdu, now = entries.popleft()
                    chunks.append(encode(site, asdu, now + offset))
                if self.tap.dropped > reported:  # the child counts them (metrics)
                    chunks.append(encode(DROPPED, (self.tap.dropped - reported).to_bytes(8, "big"), time.time()))
                    reported = self.tap.dropped
                if chunks:
                    await process.stdin.send_all(b"".join(chunks))
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
