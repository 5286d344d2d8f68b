"""The relay's side of the compliance monitor: a tap and the feeder of the monitor process.

`ShedTap` is an observer of the relay with the generic tap interface:
`up(site, asdu, now)` for every site ASDU forwarded to the BMI and `down(asdu, now)` for
every BMI ASDU accepted from the active connection. Each call is a set lookup and an
append to a bounded deque (the oldest entry is dropped and counted when it is full): no
decoding, no waiting, nothing returned to the relay. `ShedFeeder` drains the deque every
FEED_PERIOD in a task of the relay's nursery and writes it to the monitor process
(process.py), which decodes, judges, records and serves metrics on the other core.

Frames to the child: first a pickle of the `SheddingConfig` and a `Hello` (our pipe,
nothing from the network), then per ASDU: 4-octet big-endian length of what follows,
8-octet sequence number, 8-octet float wall time, 1-octet site name length (0: a BMI
ASDU), the name, the ASDU.

A restart must not lose what the monitor had not yet recorded. The feeder keeps what it
sent during the last `replay_window` seconds (the ring, bounded like the tap) and sends it
again to a new child before anything new. The child records, in the same transaction as
what it derived, the sequence number it applied last; on restart it re-applies nothing it
had applied (those copies only restore its latest measured values) and applies the rest.
If the ring no longer holds what followed (a long restart, a relay restart), the child
knows from the `Hello` and records the span as an interruption: slots flagged, shedding
verdicts not judged.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import trio

from .config import SheddingConfig
from .monitor import MAX_AGE_PERIODS

log = logging.getLogger(__name__)

FEED_PERIOD = 0.05  # seconds: time stamps are taken at the tap, so this delay costs nothing
RESTART_DELAY = 1.0
RESTART_MAX = 60.0
# Copies kept for a restarted child beyond the 1.5 sample periods its slots look back
# (monitor.MAX_AGE_PERIODS): a child restarted within this many seconds loses nothing.
REPLAY_SLACK = 10.0
HEAD = struct.Struct(">IQdB")
# The child lowers its priority before importing anything: its start-up (imports of
# prometheus_client, sqlite3, the decoder) must not take the CPU from the relay either.
CHILD = "import os; os.nice(10); from concentrator.shedding.process import main; main()"
DROPPED = "!"  # site name of the frame that reports ASDUs the tap dropped (not a valid site name)
DROPPED_BODY = struct.Struct(">Qdd")  # how many, tap time of the first and of the last (monotonic -> wall)


@dataclass(frozen=True)
class Hello:
    """What the feeder tells a new child before the copies (see the module's docstring)."""

    epoch: str  # this relay's feeder; sequence numbers count within it
    first_seq: int  # sequence number of the first copy that follows
    complete_from: float  # wall time since which the copies that follow hold every tapped ASDU
    replay: int  # copies sent again from the ring, before anything new

    @classmethod
    def fresh(cls) -> Hello:
        """A feeder that has sent nothing yet."""
        return cls(os.urandom(8).hex(), 1, time.time(), 0)


class ShedTap:
    def __init__(self, sites: frozenset[str], limit: int) -> None:
        self.sites = sites
        self.limit = limit
        self.entries: deque[tuple[str, bytes, float]] = deque()
        self.queued = 0
        self.dropped = 0
        self.reported_drops = 0
        self.dropped_span: tuple[float, float] | None = None  # tap times of the drops not yet reported

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
            _, _, at = entries.popleft()
            self.dropped += 1
            span = self.dropped_span
            self.dropped_span = (at, at) if span is None else (span[0], at)


def encode(site: str, asdu: bytes, wall: float, seq: int) -> bytes:
    name = site.encode()
    return HEAD.pack(17 + len(name) + len(asdu), seq, wall, len(name)) + name + asdu


def config_frame(config: SheddingConfig, hello: Hello | None = None) -> bytes:
    payload = pickle.dumps((config, hello or Hello.fresh()))
    return struct.pack(">I", len(payload)) + payload


class ShedFeeder:
    """In the relay: starts the monitor process, feeds it from the tap, restarts it if it
    dies (the record continues: SQLite in WAL mode)."""

    def __init__(self, config: SheddingConfig, tap: ShedTap) -> None:
        self.config = config
        self.tap = tap
        self.restarts = 0
        self.epoch = Hello.fresh().epoch
        self.complete_from = time.time()
        self.next_seq = 1
        self.ring: deque[tuple[int, float, bytes]] = deque()  # (seq, wall, frame) sent lately
        self.replay_window = MAX_AGE_PERIODS * config.sample_period + REPLAY_SLACK

    def _frames(self) -> list[bytes]:
        """Number the tap's new copies, keep them in the ring, and return their frames."""
        # The relay's clock is monotonic; the record wants the wall clock. The offset is
        # read per batch, so a slewed or stepped clock is followed.
        offset = time.time() - trio.current_time()
        entries, tap, ring = self.tap.entries, self.tap, self.ring
        out = []
        while entries:
            site, asdu, now = entries.popleft()
            out.append(self._number(site, asdu, now + offset))
        if tap.dropped_span is not None:  # the child counts them (metrics) and marks the span
            first, last = tap.dropped_span
            body = DROPPED_BODY.pack(tap.dropped - tap.reported_drops, first + offset, last + offset)
            out.append(self._number(DROPPED, body, time.time()))
            tap.reported_drops, tap.dropped_span = tap.dropped, None
        horizon = time.time() - self.replay_window
        while ring and (ring[0][1] < horizon or len(ring) > self.tap.limit):
            _, wall, _ = ring.popleft()
            self.complete_from = max(self.complete_from, wall)
        return out

    def _number(self, site: str, asdu: bytes, wall: float) -> bytes:
        frame = encode(site, asdu, wall, self.next_seq)
        self.ring.append((self.next_seq, wall, frame))
        self.next_seq += 1
        return frame

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
            self._frames()  # what waited in the tap goes into the ring, then the ring to the child
            ring = self.ring
            hello = Hello(self.epoch, ring[0][0] if ring else self.next_seq, self.complete_from, len(ring))
            await process.stdin.send_all(config_frame(self.config, hello) + b"".join(f for _, _, f in ring))
            while True:
                await trio.sleep(FEED_PERIOD)
                if process.poll() is not None:
                    raise trio.BrokenResourceError(f"exited with status {process.returncode}")
                chunks = self._frames()
                if chunks:
                    await process.stdin.send_all(b"".join(chunks))
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
