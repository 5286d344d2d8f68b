"""A simulated BMI: an IEC 104 controlling station (c104.Client) with one connection.

It talks to one endpoint (a UPDC, or the concentrator's uplink) and registers a
station per common address it expects, each with the breaker command point.

No `from __future__ import annotations` here: c104 checks callback annotations
against the real classes and refuses string annotations.

Threading: c104 calls the callbacks on its own threads. The command methods
(`select_and_execute_breaker`, `interrogation`, `clock_sync`) block until the
answer or the command timeout: from trio, run them in `trio.to_thread.run_sync`.
Run one command at a time per BmiSimulator: verdicts are read from the captures.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import c104

from concentrator.iec104.asdu import BROADCAST_CA, AsduHeader, Cause
from concentrator.iec104.decode import TypeId
from concentrator.sim.points import (
    IOA_BREAKER_CMD,
    FrameCapture,
    wait_until,
)

log = logging.getLogger(__name__)

# How long to look for a reply in the captures after c104 gave up on it.
RAW_CAPTURE_GRACE = 0.2


class BmiSimulator:
    def __init__(
        self,
        host: str,
        port: int,
        common_addresses: Iterable[int],
        *,
        init: c104.Init = c104.Init.NONE,
        tick_rate_ms: int = 50,
        command_timeout_ms: int = 2_000,
        originator_address: int = 0,
        unmute_after: float = 1.0,
    ) -> None:
        """`init`: c104.Init.NONE (default) only starts data transfer, and tests
        ask for interrogation and clock sync explicitly; c104.Init.ALL sends both
        to CA 65535 after every (re)connection, like a real BMI. Init.MUTED
        connects without STARTDT and disables the unmute work-around.

        `unmute_after`: c104 sometimes leaves a fresh connection OPEN_MUTED and
        never sends STARTDT (about 1 start in 7 here); after that many seconds
        still muted, the connection is unmuted (which sends STARTDT)."""
        if tick_rate_ms < 50:
            raise ValueError("c104 refuses tick_rate_ms below 50")
        self.host = host
        self.port = port
        self.common_addresses = tuple(common_addresses)
        self.init = init
        self.unmute_after = unmute_after
        self.command_timeout = command_timeout_ms / 1000

        self.sent = FrameCapture()
        self.received = FrameCapture()
        self._lock = threading.Lock()
        self._states: list[tuple[float, c104.ConnectionState]] = []
        self._timers: list[threading.Timer] = []
        self._running = False

        self.client = c104.Client(tick_rate_ms=tick_rate_ms, command_timeout_ms=command_timeout_ms)
        self.client.originator_address = originator_address
        connection = self.client.add_connection(ip=host, port=port, init=init)
        if connection is None:
            raise RuntimeError(f"c104 refused a connection to {host}:{port}")
        self.connection = connection
        connection.originator_address = originator_address
        for ca in self.common_addresses:
            station = connection.add_station(common_address=ca)
            if station is None:
                raise ValueError(f"c104 refused station CA {ca}")
            command = station.add_point(
                io_address=IOA_BREAKER_CMD,
                type=c104.Type.C_DC_NA_1,
                command_mode=c104.CommandMode.SELECT_AND_EXECUTE,
            )
            if command is None:
                raise RuntimeError("c104 refused the breaker command point")
        connection.on_send_raw(callable=self._on_send_raw)
        connection.on_receive_raw(callable=self._on_receive_raw)
        connection.on_state_change(callable=self._on_state_change)

    # -- life cycle -------------------------------------------------------------

    def start(self) -> Self:
        with self._lock:
            self._running = True
        self.client.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._running = False
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self.client.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def state(self) -> c104.ConnectionState:
        return self.connection.state

    @property
    def is_started(self) -> bool:
        """Connection open and STARTDT confirmed (c104 OPEN, as opposed to OPEN_MUTED)."""
        return self.connection.state == c104.ConnectionState.OPEN

    @property
    def states(self) -> list[tuple[float, c104.ConnectionState]]:
        """Every state change seen, with its time.monotonic()."""
        with self._lock:
            return list(self._states)

    def wait_started(self, timeout: float = 5.0) -> bool:
        """Poll until the connection is open and started, or `timeout` passes."""
        return wait_until(lambda: self.is_started, timeout)

    # -- c104 callbacks (c104 threads) ------------------------------------------

    def _on_send_raw(self, connection: c104.Connection, data: bytes) -> None:
        self.sent.append(data)

    def _on_receive_raw(self, connection: c104.Connection, data: bytes) -> None:
        self.received.append(data)

    def _on_state_change(self, connection: c104.Connection, state: c104.ConnectionState) -> None:
        with self._lock:
            self._states.append((time.monotonic(), state))
            if state != c104.ConnectionState.OPEN_MUTED or self.init == c104.Init.MUTED or not self._running:
                return
            # Unmute from a timer thread: calling back into c104 from its own
            # callback thread is asking for a deadlock.
            timer = threading.Timer(self.unmute_after, self._unmute_if_stuck)
            timer.daemon = True
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _unmute_if_stuck(self) -> None:
        with self._lock:
            if not self._running:
                return
        if self.connection.state == c104.ConnectionState.OPEN_MUTED:
            self.connection.unmute()

    # -- commands (block up to command_timeout_ms) ------------------------------
    #
    # c104's own verdicts are not trusted, for two reasons seen here:
    # - its client waits on a condition variable without first checking whether
    #   the answer already came, so an ACT_CON that arrives before it waits (easy
    #   on loopback) is missed: the call returns False after command_timeout_ms,
    #   and for select-before-execute the execute is then never sent;
    # - an unknown CA is answered with ACT_CON negative and then a cause-46 mirror
    #   without the negative bit, which c104 counts as success (or not, by race).
    # So the verdict comes from the captured replies.

    def select_and_execute_breaker(self, ca: int, on: bool) -> bool:
        """C_DC_NA_1 select, then execute, on the breaker of station `ca`
        (on = close). True when select and execute were both confirmed positively
        and nothing negative or "unknown CA" came back."""
        station = self.connection.get_station(common_address=ca)
        point = station.get_point(io_address=IOA_BREAKER_CMD) if station else None
        if point is None:
            raise KeyError(f"CA {ca} is not one of {self.common_addresses}")
        point.value = c104.Double.ON if on else c104.Double.OFF
        mark_rx, mark_tx = len(self.received.snapshot()), len(self.sent.snapshot())
        for attempt in range(2):
            accepted = point.transmit(cause=c104.Cot.ACTIVATION)
            # Raw captures may trail c104's own processing a little: when c104
            # says yes, give the confirmation time to show up in the capture.
            verdict = self._command_verdict(mark_rx, ca, self.command_timeout if accepted else RAW_CAPTURE_GRACE)
            if verdict is not None:
                return verdict
            selected = any(h.cause == Cause.ACTIVATION_CON for h, _ in self._replies(mark_rx, TypeId.C_DC_NA_1, ca))
            executed = any(a[0] == TypeId.C_DC_NA_1 and not a[-1] & 0x80 for a in self.sent.asdus_since(mark_tx))
            if not selected or executed or attempt:
                return False
            # The select was confirmed but c104 missed it and gave up: select again.
            log.info("CA %d: c104 missed the select confirmation, selecting again", ca)
        return False

    def _command_verdict(self, mark: int, ca: int, timeout: float) -> bool | None:
        """False on a negative or unknown-CA reply, True once the execute (S/E
        bit clear) is confirmed, None if neither shows up within `timeout`."""
        verdict: list[bool] = []

        def decided() -> bool:
            for head, asdu in self._replies(mark, TypeId.C_DC_NA_1, ca):
                if head.negative or head.cause == Cause.UNKNOWN_COMMON_ADDRESS:
                    verdict[:] = [False]
                    return True
                if head.cause == Cause.ACTIVATION_CON and not asdu[-1] & 0x80:
                    verdict[:] = [True]
            return bool(verdict)

        wait_until(decided, timeout)
        return verdict[0] if verdict else None

    def interrogation(self, ca: int = BROADCAST_CA) -> bool:
        """Station interrogation (C_IC_NA_1, QOI 20); True when every addressed
        station (all expected ones for CA 65535) confirmed it positively."""
        mark = len(self.received.snapshot())
        if not self.connection.interrogation(
            common_address=ca,
            cause=c104.Cot.ACTIVATION,
            qualifier=c104.Qoi.STATION,
            wait_for_response=False,
        ):
            return False
        return self._await_confirmations(mark, TypeId.C_IC_NA_1, ca)

    def clock_sync(self, ca: int = BROADCAST_CA) -> bool:
        """Clock synchronisation (C_CS_NA_1) with the host's clock; confirmed as
        for `interrogation`."""
        mark = len(self.received.snapshot())
        if not self.connection.clock_sync(common_address=ca, wait_for_response=False):
            return False
        return self._await_confirmations(mark, TypeId.C_CS_NA_1, ca)

    def _replies(self, mark: int, type_id: int, ca: int) -> list[tuple[AsduHeader, bytes]]:
        """Received ASDUs of `type_id` for `ca` (any CA for broadcast) after `mark`."""
        found = []
        for asdu in self.received.asdus_since(mark):
            head = AsduHeader.parse(asdu)
            if head.type_id == type_id and (ca == BROADCAST_CA or head.common_address == ca):
                found.append((head, asdu))
        return found

    def _await_confirmations(self, mark: int, type_id: int, ca: int) -> bool:
        expected = set(self.common_addresses) if ca == BROADCAST_CA else {ca}
        verdict: dict[int, bool] = {}

        def settled() -> bool:
            for head, _ in self._replies(mark, type_id, ca):
                if head.cause == Cause.UNKNOWN_COMMON_ADDRESS or head.negative:
                    verdict[head.common_address] = False
                elif head.cause == Cause.ACTIVATION_CON:
                    verdict.setdefault(head.common_address, True)
            return expected <= verdict.keys()

        wait_until(settled, self.command_timeout)
        return expected <= verdict.keys() and all(verdict[c] for c in expected)

    # -- captures ----------------------------------------------------------------

    def received_asdus(self) -> list[bytes]:
        return self.received.asdus()

    def sent_asdus(self) -> list[bytes]:
        return self.sent.asdus()

    def wait_received(
        self,
        predicate: Callable[[AsduHeader], bool],
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[bytes]:
        """Poll until at least `count` received ASDUs match `predicate` (given the
        parsed header) or `timeout` passes; returns the matching ASDUs so far."""
        found: list[bytes] = []

        def enough() -> bool:
            found[:] = [a for a in self.received_asdus() if predicate(AsduHeader.parse(a))]
            return len(found) >= count

        wait_until(enough, timeout)
        return found
