"""A simulated UPDC: an IEC 104 controlled station (c104.Server) with one CA.

Point map (see `concentrator.sim.points`): total site power and per-load power as
M_ME_TF_1 sent every `sample_period` seconds, breaker position M_DP_TB_1, reclosing
lock M_SP_TB_1, a select-before-execute C_DC_NA_1 breaker command (opening also sets
the lock) and C_SC_NA_1 release command (clears the lock). A shedding with misbehaviour
on request is played by `shedding_site.SheddingSite` (own codec).

No `from __future__ import annotations` here: c104 checks callback annotations
against the real classes and refuses string annotations.

Threading: c104 calls the callbacks below on its own threads, and `start()` runs
a sampler thread (plus a random-change thread if asked), so every piece of state
that both sides touch sits behind `self._lock`.
"""

import datetime
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import c104

from concentrator.sim.points import (
    IOA_BREAKER,
    IOA_BREAKER_CMD,
    IOA_LOCK,
    IOA_RELEASE_CMD,
    IOA_TOTAL_POWER,
    FrameCapture,
    free_tcp_port,
    load_power_ioa,
)

# 16 M_ME_TF_1 objects (15 octets each, listed with their IOA) fill one ASDU
# (6 + 16 * 15 = 246 <= 249); a sample goes out as one ASDU, so cap the loads.
MAX_LOADS = 15


@dataclass(frozen=True)
class ExecutedCommand:
    """A breaker command the UPDC executed (after its select was confirmed)."""

    monotonic: float
    close: bool
    originator_address: int


@dataclass(frozen=True)
class ClockSync:
    monotonic: float
    peer: str
    clock: datetime.datetime


def _utc_now() -> datetime.datetime:
    # c104 encodes recorded_at into CP56Time2a; give it an aware UTC time so the
    # time tags on the wire are UTC whatever the host's timezone.
    return datetime.datetime.now(datetime.UTC)


class UpdcSimulator:
    def __init__(
        self,
        name: str,
        common_address: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        sample_period: float = 4.0,
        loads: int = 2,
        load_kw: float = 1000.0,
        base_kw: float = 500.0,
        measurement_cause: c104.Cot = c104.Cot.SPONTANEOUS,
        random_change_period: float | None = None,
        seed: int | None = None,
        tick_rate_ms: int = 50,
        select_timeout_ms: int = 10_000,
        max_connections: int = 0,
    ) -> None:
        """`port=None` picks a free port at `start()` (read it back from `.port`).

        `measurement_cause` defaults to SPONTANEOUS: the companion standard's
        cause table lists spontaneous (3) and requested (5), not periodic (1), for
        time-tagged measurands (type 36). Pass c104.Cot.PERIODIC to imitate a UPDC
        that labels its 4 s samples cyclic. (c104 itself answers an interrogation
        with type 36 and cause 20 regardless.)
        `random_change_period` (seconds) toggles the breaker or the lock at random
        that often; `seed` makes the values and the changes reproducible.
        """
        if not 1 <= common_address <= 65534:
            raise ValueError("common address must be 1..65534")
        if not 1 <= loads <= MAX_LOADS:
            raise ValueError(f"loads must be 1..{MAX_LOADS}")
        if sample_period <= 0:
            raise ValueError("sample_period must be positive")
        if tick_rate_ms < 50:
            raise ValueError("c104 refuses tick_rate_ms below 50")
        self.name = name
        self.common_address = common_address
        self.host = host
        self._port = port or 0
        self.sample_period = sample_period
        self.loads = loads
        self.load_kw = load_kw
        self.base_kw = base_kw
        self.measurement_cause = measurement_cause
        self.random_change_period = random_change_period
        self._tick_rate_ms = tick_rate_ms
        self._select_timeout_ms = select_timeout_ms
        self._max_connections = max_connections
        self._rng = random.Random(seed)
        # A second generator for the change thread keeps the values reproducible
        # whatever the interleaving of the two threads.
        self._change_rng = random.Random(None if seed is None else seed + 1)

        self._lock = threading.Lock()
        self._breaker_closed = True
        self._locked = False
        self._executed: list[ExecutedCommand] = []
        self._clock_syncs: list[ClockSync] = []
        # Settable by tests: refuse breaker commands (negative confirmation), or
        # send samples flagged invalid (annex A40 5.3 counts them as zero).
        self.accept_commands = True
        self.invalid_measurements = False

        self.sent = FrameCapture()
        self.received = FrameCapture()

        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: c104.Server | None = None
        self._measurements: list[c104.Point] = []
        self._breaker: c104.Point | None = None
        self._lock_point: c104.Point | None = None

    # -- life cycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def server(self) -> c104.Server:
        if self._server is None:
            raise RuntimeError(f"{self.name} not started")
        return self._server

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{self.name} already started")
        # A port picked here can be taken before c104 binds it; c104 then raises
        # RuntimeError ("Port in use?"), so pick again. A given port fails at once,
        # and a restart keeps the port of the first start (peers reconnect to it).
        fixed = self._port
        attempts = 1 if fixed else 5
        for attempt in range(attempts):
            port = fixed or free_tcp_port(self.host)
            server = self._build_server(port)
            try:
                server.start()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                continue
            self._server, self._port = server, port
            break
        self._stop.clear()
        self._spawn(self._sample_loop, "sampler")
        if self.random_change_period:
            self._spawn(self._random_loop, "random")
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], role: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{role}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _build_server(self, port: int) -> c104.Server:
        server = c104.Server(
            ip=self.host,
            port=port,
            tick_rate_ms=self._tick_rate_ms,
            select_timeout_ms=self._select_timeout_ms,
            max_connections=self._max_connections,
        )
        station = server.add_station(common_address=self.common_address)
        assert station is not None
        now = _utc_now()
        measurements = [_add_point(station, IOA_TOTAL_POWER, c104.Type.M_ME_TF_1)]
        for load in range(1, self.loads + 1):
            measurements.append(_add_point(station, load_power_ioa(load), c104.Type.M_ME_TF_1))
        breaker = _add_point(station, IOA_BREAKER, c104.Type.M_DP_TB_1)
        lock = _add_point(station, IOA_LOCK, c104.Type.M_SP_TB_1)
        # No related_io_address/autoreturn: c104 would send the return information
        # (cause 11) a tick after ACT_TERM; sending the change from the command
        # callback puts it between ACT_CON and ACT_TERM, the usual order.
        command = _add_point(
            station,
            IOA_BREAKER_CMD,
            c104.Type.C_DC_NA_1,
            command_mode=c104.CommandMode.SELECT_AND_EXECUTE,
        )
        with self._lock:
            closed, locked = self._breaker_closed, self._locked
            self._fill_measurements(measurements, now)
        breaker.info = c104.DoubleInfo(state=_double(closed), recorded_at=now)
        lock.info = c104.SingleInfo(on=locked, recorded_at=now)
        command.on_receive(callable=self._on_breaker_command)
        # The release ("sblocco", annex A40 5.1.4): the BMI's C_SC_NA_1 ON unlocks reclosing.
        release = _add_point(
            station, IOA_RELEASE_CMD, c104.Type.C_SC_NA_1, command_mode=c104.CommandMode.SELECT_AND_EXECUTE
        )
        release.on_receive(callable=self._on_release_command)
        server.on_send_raw(callable=self._on_send_raw)
        server.on_receive_raw(callable=self._on_receive_raw)
        server.on_clock_sync(callable=self._on_clock_sync)
        self._measurements = measurements
        self._breaker, self._lock_point = breaker, lock
        return server

    # -- c104 callbacks (c104 threads) ------------------------------------------

    def _on_send_raw(self, server: c104.Server, data: bytes) -> None:
        self.sent.append(data)

    def _on_receive_raw(self, server: c104.Server, data: bytes) -> None:
        self.received.append(data)

    def _on_clock_sync(self, server: c104.Server, ip: str, date_time: datetime.datetime) -> c104.ResponseState:
        with self._lock:
            self._clock_syncs.append(ClockSync(time.monotonic(), ip, date_time))
        return c104.ResponseState.SUCCESS

    def _on_breaker_command(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        # c104 answers the select itself and calls this on the execute only.
        state = point.value
        if not self.accept_commands or state not in (c104.Double.ON, c104.Double.OFF):
            return c104.ResponseState.FAILURE
        close = state == c104.Double.ON
        with self._lock:
            self._executed.append(ExecutedCommand(time.monotonic(), close, message.originator_address))
        self._set_breaker(close)
        if not close:  # annex A40 5.1.4: an opening command locks reclosing until the release
            self._set_lock(True)
        return c104.ResponseState.SUCCESS

    def _on_release_command(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        if not self.accept_commands or not point.value:
            return c104.ResponseState.FAILURE
        self._set_lock(False)
        return c104.ResponseState.SUCCESS

    # -- process simulation -----------------------------------------------------

    @property
    def breaker_closed(self) -> bool:
        with self._lock:
            return self._breaker_closed

    @property
    def locked(self) -> bool:
        with self._lock:
            return self._locked

    @property
    def executed_commands(self) -> list[ExecutedCommand]:
        with self._lock:
            return list(self._executed)

    @property
    def clock_syncs(self) -> list[ClockSync]:
        with self._lock:
            return list(self._clock_syncs)

    def sent_asdus(self) -> list[bytes]:
        return self.sent.asdus()

    def received_asdus(self) -> list[bytes]:
        return self.received.asdus()

    def toggle_breaker(self) -> bool:
        """Flip the breaker and report it spontaneously; returns the new position
        (True = closed). Nothing is queued if no connection is started."""
        with self._lock:
            close = not self._breaker_closed
        self._set_breaker(close)
        return close

    def toggle_lock(self) -> bool:
        """Flip the reclosing lock and report it; returns the new state."""
        with self._lock:
            locked = not self._locked
        self._set_lock(locked)
        return locked

    def _set_lock(self, locked: bool) -> None:
        with self._lock:
            self._locked = locked
        point = self._lock_point
        if point is not None and self._server is not None:
            point.info = c104.SingleInfo(on=locked, recorded_at=_utc_now())
            point.transmit(cause=c104.Cot.SPONTANEOUS)

    def sample_now(self) -> bool:
        """Send one sample immediately (besides the periodic ones); returns
        c104's answer: False when no connection is started."""
        server = self._server
        if server is None:
            return False
        with self._lock:
            self._fill_measurements(self._measurements, _utc_now())
        return server.transmit_batch(c104.Batch(cause=self.measurement_cause, points=self._measurements))

    def _set_breaker(self, close: bool) -> None:
        with self._lock:
            self._breaker_closed = close
        point = self._breaker
        if point is not None and self._server is not None:
            point.info = c104.DoubleInfo(state=_double(close), recorded_at=_utc_now())
            point.transmit(cause=c104.Cot.SPONTANEOUS)

    def _fill_measurements(self, points: list[c104.Point], now: datetime.datetime) -> None:
        """Load n draws about load_kw * (1 + n / 10) while the breaker is closed and
        nothing once it is open; the site total adds a base load. Caller holds _lock."""
        quality = c104.Quality.Invalid if self.invalid_measurements else c104.Quality()
        load_values = [
            self.load_kw * (1 + n / 10) * self._rng.uniform(0.98, 1.02) if self._breaker_closed else 0.0
            for n in range(1, len(points))
        ]
        total = self.base_kw * self._rng.uniform(0.98, 1.02) + sum(load_values)
        for point, value in zip(points, [total, *load_values], strict=True):
            point.info = c104.ShortInfo(actual=value, quality=quality, recorded_at=now)

    def _sample_loop(self) -> None:
        # Fixed-rate schedule: a slow transmit does not push later samples back.
        next_at = time.monotonic() + self.sample_period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.sample_now()
            next_at += self.sample_period
            if next_at < time.monotonic():  # fell behind (suspended?): skip, no burst
                next_at = time.monotonic() + self.sample_period

    def _random_loop(self) -> None:
        period = self.random_change_period
        assert period
        while not self._stop.wait(self._change_rng.expovariate(1 / period)):
            if self._change_rng.random() < 0.5:
                self.toggle_breaker()
            else:
                self.toggle_lock()


def _add_point(
    station: c104.Station,
    ioa: int,
    point_type: c104.Type,
    command_mode: c104.CommandMode = c104.CommandMode.DIRECT,
) -> c104.Point:
    point = station.add_point(io_address=ioa, type=point_type, command_mode=command_mode)
    if point is None:
        raise RuntimeError(f"c104 refused point {ioa} ({point_type})")
    return point


def _double(closed: bool) -> c104.Double:
    return c104.Double.ON if closed else c104.Double.OFF
