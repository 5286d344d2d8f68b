"""A UPDC that plays a shedding, on our codec (for the compliance monitor's tests and demo).

It serves IEC 104 through `QueueingStation` (unconfirmed data is kept and sent again, as
lib60870 does) with the point map of `points.py`: total power and load measures as
M_ME_TF_1 every `sample_period`, the breaker as M_DP_TB_1, the reclosing lock as
M_SP_TB_1. It executes the BMI's breaker command (C_DC_NA_1 OFF, after its select) and the
release (C_SC_NA_1 ON), or opens on `trip()`; opening drops the load measures to zero
and sets the lock. Each misbehaviour the monitor must catch can be switched on:

- `late_opening`: seconds added to the opening delay;
- `reconnect_kw` / `reconnect_after`: the holder reconnects a load while shed
  (total power rises, the interruptible load measure stays at zero);
- `invalid_quality`: samples carry the IV bit;
- `clock_skew`: seconds added to every time tag;
- `stuck_load`: the load measure keeps reading after the opening;
- `early_unlock_after`: the lock drops that long after the opening, before any release.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from concentrator.iec104.asdu import Cause
from concentrator.iec104.decode import TypeId
from concentrator.sim.points import (
    IOA_BREAKER,
    IOA_BREAKER_CMD,
    IOA_LOCK,
    IOA_RELEASE_CMD,
    IOA_TOTAL_POWER,
    double_point,
    float_measurements,
    load_power_ioa,
    single_point,
)

from .codec_peers import QueueingStation

COMMAND_POLL = 0.005  # seconds between looks at what the BMI sent


@dataclass
class Misbehaviour:
    late_opening: float = 0.0
    reconnect_kw: float = 0.0
    reconnect_after: float = 0.0
    invalid_quality: bool = False
    clock_skew: float = 0.0
    stuck_load: bool = False
    early_unlock_after: float | None = None


class SheddingSite:
    def __init__(self, common_address: int, *, sample_period: float = 4.0, base_kw: float = 500.0,
                 loads_kw: tuple[float, ...] = (400.0, 300.0), opening_delay: float = 0.05,
                 misbehaviour: Misbehaviour | None = None) -> None:  # fmt: skip
        self.station = QueueingStation(common_address)
        self.ca = common_address
        self.sample_period = sample_period
        self.base_kw = base_kw
        self.loads_kw = loads_kw
        self.opening_delay = opening_delay
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.closed = True
        self.locked = False
        self.opened_at: float | None = None  # wall clock
        self.commands: list[bytes] = []

    @property
    def port(self) -> int:
        return self.station.port

    def now(self) -> float:
        """This UPDC's clock (skewed on request)."""
        return time.time() + self.misbehaviour.clock_skew

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(self.station.serve)
            nursery.start_soon(self._sampler)
            nursery.start_soon(self._commands, nursery)
            task_status.started(port)

    def trip(self, nursery: trio.Nursery) -> None:
        """The multicast trip reached this UPDC: open (after the opening delay)."""
        nursery.start_soon(self._open)

    # ------------------------------------------------------------------ behaviour
    def sample(self) -> None:
        m = self.misbehaviour
        shed = self.opened_at is not None
        loads = [0.0 if shed and not m.stuck_load else kw for kw in self.loads_kw]
        total = self.base_kw + sum(0.0 if shed else kw for kw in self.loads_kw)
        if shed and time.time() - self.opened_at >= m.reconnect_after:  # type: ignore[operator]
            total += m.reconnect_kw
        values = [(IOA_TOTAL_POWER, total), *((load_power_ioa(n), v) for n, v in enumerate(loads, 1))]
        self.station.enqueue(float_measurements(self.ca, values, self.now(), invalid=m.invalid_quality))

    async def _sampler(self) -> None:
        next_at = trio.current_time()
        while True:
            next_at += self.sample_period
            await trio.sleep_until(next_at)
            self.sample()

    async def _commands(self, nursery: trio.Nursery) -> None:
        seen = 0
        while True:
            await trio.sleep(COMMAND_POLL)
            received = self.station.received
            while seen < len(received):
                asdu = received[seen]
                seen += 1
                self._command(asdu, nursery)

    def _command(self, asdu: bytes, nursery: trio.Nursery) -> None:
        if asdu[0] not in (TypeId.C_DC_NA_1, TypeId.C_SC_NA_1) or asdu[2] & 0x3F != Cause.ACTIVATION:
            return
        self.commands.append(asdu)
        confirmation = bytearray(asdu)
        confirmation[2] = (confirmation[2] & 0xC0) | Cause.ACTIVATION_CON
        self.station.enqueue(bytes(confirmation))
        ioa, octet = int.from_bytes(asdu[6:9], "little"), asdu[9]
        if octet & 0x80:  # a select: confirmed, nothing done yet
            return
        if asdu[0] == TypeId.C_DC_NA_1 and ioa == IOA_BREAKER_CMD and octet & 0x03 == 1:
            nursery.start_soon(self._open)
        elif asdu[0] == TypeId.C_SC_NA_1 and ioa == IOA_RELEASE_CMD and octet & 0x01:
            self._set_lock(False)

    async def _open(self) -> None:
        if not self.closed:
            return
        await trio.sleep(self.opening_delay + self.misbehaviour.late_opening)
        self.closed = False
        self.opened_at = time.time()
        self.station.enqueue(double_point(self.ca, IOA_BREAKER, False, self.now()))
        self._set_lock(True)
        if self.misbehaviour.early_unlock_after is not None:
            await trio.sleep(self.misbehaviour.early_unlock_after)
            self._set_lock(False)

    def _set_lock(self, locked: bool) -> None:
        self.locked = locked
        self.station.enqueue(single_point(self.ca, IOA_LOCK, locked, self.now()))
