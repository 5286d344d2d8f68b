"""The relay's side of the compliance monitor: a tap and the feeder of the monitor process.

`ShedTap` is an observer of the relay with the generic tap interface:
`up(site, asdu, now)` for every site ASDU forwarded to the BMI and `down(asdu, now)` for
every BMI ASDU accepted from the active connection. Each call is a set lookup and an
append to a bounded deque (the oldest entry is dropped and counted when it is full): no
decoding, no waiting, nothing returned to the relay. `ShedFeeder` drains the deque every
FEED_PERIOD in a task of the relay's nursery and writes it to the monitor process
(process.py), which decodes, judges, records and serves metrics on the other core.

Frames to the child are the sidecar's (concentrator/sidecar.py): first the
`SheddingConfig` and a `Hello`, then one record per ASDU, numbered, with its wall time and
site name (empty: a BMI ASDU).

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

import os
import struct
import time
from collections import deque
from dataclasses import dataclass

import trio

from ..sidecar import Backoff, Child, Sidecar, command, encode, message
from .config import SheddingConfig
from .monitor import MAX_AGE_PERIODS

FEED_PERIOD = 0.05  # seconds: time stamps are taken at the tap, so this delay costs nothing
# Copies kept for a restarted child beyond the 1.5 sample periods its slots look back
# (monitor.MAX_AGE_PERIODS): a child restarted within this many seconds loses nothing.
REPLAY_SLACK = 10.0
CHILD = "concentrator.shedding.process"  # the child's module (sidecar.command)
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


def config_frame(config: SheddingConfig, hello: Hello | None = None) -> bytes:
    """The child's first message (tests start the child by hand)."""
    return message((config, hello or Hello.fresh()))


class ShedFeeder:
    """In the relay: starts the monitor process, feeds it from the tap, restarts it if it
    dies (the record continues: SQLite in WAL mode)."""

    def __init__(self, config: SheddingConfig, tap: ShedTap) -> None:
        self.config = config
        self.tap = tap
        self.sidecar = Sidecar("shedding monitor", command(CHILD), self._setup, policy=Backoff())
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
        """Run the monitor process as the relay's sidecar, for as long as the relay runs."""
        await self.sidecar.run(self._session)

    def _setup(self) -> tuple[SheddingConfig, Hello]:
        """A new child's configuration: what waited in the tap goes into the ring, and the
        Hello says what of it follows."""
        self._frames()
        ring = self.ring
        return self.config, Hello(self.epoch, ring[0][0] if ring else self.next_seq, self.complete_from, len(ring))

    async def _session(self, child: Child) -> None:
        await child.send([f for _, _, f in self.ring])
        while True:
            await trio.sleep(FEED_PERIOD)
            await child.send(self._frames())
