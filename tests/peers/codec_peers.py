"""IEC 104 peers on our own codec, for tests and benchmarks.

c104's server forgets events while no connection is started and drops them beyond a few
thousand per second, so it can show neither end-to-end no-loss nor the relay's limits.
These peers can:

- `QueueingStation`: a controlled station (UPDC) that keeps every ASDU until the
  controlling station confirms it, and sends what was not confirmed again on the next
  started connection, as lib60870's server does when a connection is lost;
- `Lib60870Station`: such a UPDC that also answers clock synchronisation and
  interrogation as lib60870 does: its confirmation and termination are the received
  ASDU sent back with the new cause, so a broadcast (CA 65535) is answered with CA 65535;
- `CodecMaster`: a controlling station (BMI) that records what it receives, with times;
- `Ed2Master`: a BMI with two connections (IEC 104 Ed. 2 redundancy group) that moves
  the active role between them and confirms late, as a BMI's t2 does.

Payloads carry a sequence number (integrated totals, type 15), so that loss,
duplicates and order are countable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from concentrator.iec104.asdu import Cause
from concentrator.iec104.decode import TypeId
from concentrator.iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Event,
    Link,
    LinkParams,
    Role,
)

from .session import LinkSession, set_nodelay

SEQUENCE_IOA = 7001


def counter_asdu(common_address: int, sequence: int, ioa: int = SEQUENCE_IOA) -> bytes:
    """M_IT_NA_1 (integrated total) whose counter value is `sequence`."""
    return (
        bytes((TypeId.M_IT_NA_1, 1, Cause.SPONTANEOUS, 0))
        + common_address.to_bytes(2, "little")
        + ioa.to_bytes(3, "little")
        + (sequence & 0xFFFFFFFF).to_bytes(4, "little")
        + bytes((sequence >> 32 & 0x1F,))  # BCR sequence bits, keeps values distinct
    )


def counter_of(asdu: bytes) -> tuple[int, int]:
    """(CA, sequence) of an ASDU made by `counter_asdu`."""
    return asdu[4] | asdu[5] << 8, int.from_bytes(asdu[9:13], "little")


class QueueingStation:
    """A UPDC on our codec with lib60870's queue semantics: sent but unconfirmed ASDUs go
    back to waiting when their connection is lost or superseded, and leave again, in
    order, on the next started connection."""

    def __init__(self, common_address: int, params: LinkParams = LinkParams()) -> None:
        self.common_address = common_address
        self.params = params
        self.waiting: deque[bytes] = deque()
        self.unconfirmed: deque[bytes] = deque()
        self.received: list[bytes] = []  # ASDUs from the controlling station
        self.connections = 0
        self.port = 0
        # Called with each ASDU the controlling station confirmed (tests check it was
        # confirmed by the BMI first).
        self.on_confirmed: Callable[[bytes], None] | None = None
        self._active: LinkSession | None = None
        self._sessions: set[LinkSession] = set()
        self._next_sequence = 0

    def enqueue(self, asdu: bytes) -> None:
        self.waiting.append(asdu)
        self._pump()

    def enqueue_counter(self) -> int:
        sequence = self._next_sequence
        self._next_sequence += 1
        self.enqueue(counter_asdu(self.common_address, sequence))
        return sequence

    @property
    def confirmed_all(self) -> bool:
        return not self.waiting and not self.unconfirmed

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, port, host="127.0.0.1"))
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    async def _handle(self, stream: trio.SocketStream) -> None:
        set_nodelay(stream)
        session = LinkSession(
            stream, Link(Role.CONTROLLED, self.params, now=trio.current_time()), self._on_event, "station"
        )
        self._sessions.add(session)
        self.connections += 1
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            if session is self._active:
                self._deactivate()

    def _deactivate(self) -> None:
        self._active = None
        self.waiting.extendleft(reversed(self.unconfirmed))
        self.unconfirmed.clear()

    def _on_event(self, session: LinkSession, event: Event) -> None:
        if isinstance(event, DataTransferStarted):
            if self._active is not None and self._active is not session:
                self._active.close("superseded: STARTDT on another connection")  # as lib60870 does
            self._deactivate()
            self._active = session
        elif isinstance(event, DataTransferStopped) and session is self._active:
            self._deactivate()
        elif isinstance(event, Acknowledged) and session is self._active:
            for _ in range(event.count):
                asdu = self.unconfirmed.popleft()
                if self.on_confirmed is not None:
                    self.on_confirmed(asdu)
        elif isinstance(event, AsduReceived):
            self.received.append(event.asdu)
        self._pump()

    def _pump(self) -> None:
        session = self._active
        if session is None:
            return
        now = trio.current_time()
        while self.waiting and session.link.can_send:
            asdu = self.waiting.popleft()
            session.link.send_asdu(asdu, now)
            self.unconfirmed.append(asdu)
        session.wake()


class Lib60870Station(QueueingStation):
    """A `QueueingStation` whose command handling is lib60870's (its CS104 server and the
    handlers of its examples): a clock synchronisation (type 103) is confirmed, an
    interrogation (type 100) confirmed, answered with one single point of the station's
    own CA and terminated. Confirmation and termination reuse the received ASDU, with
    its CA: a broadcast keeps CA 65535. `answers` records every ASDU sent in reply."""

    def __init__(self, common_address: int, params: LinkParams = LinkParams()) -> None:
        super().__init__(common_address, params)
        self.answers: list[bytes] = []

    def _on_event(self, session: LinkSession, event: Event) -> None:
        if isinstance(event, AsduReceived) and event.asdu[2] & 0x3F == Cause.ACTIVATION:
            asdu = event.asdu
            if asdu[0] in (TypeId.C_CS_NA_1, TypeId.C_IC_NA_1):
                self._answer(with_cause(asdu, Cause.ACTIVATION_CON))
            if asdu[0] == TypeId.C_IC_NA_1:
                qoi = asdu[9]
                self._answer(
                    bytes((TypeId.M_SP_NA_1, 1, qoi, 0))
                    + self.common_address.to_bytes(2, "little")
                    + (1).to_bytes(3, "little")
                    + b"\x01"
                )
                self._answer(with_cause(asdu, Cause.ACTIVATION_TERMINATION))
        super()._on_event(session, event)

    def _answer(self, asdu: bytes) -> None:
        self.answers.append(asdu)
        self.waiting.append(asdu)


def with_cause(asdu: bytes, cause: int) -> bytes:
    """The ASDU with a new cause (P/N and test bits cleared, originator and CA kept): how
    lib60870's `sendACT_CON` / `sendACT_TERM` answer the ASDU they received."""
    return asdu[:2] + bytes((cause,)) + asdu[3:]


@dataclass
class CodecMaster:
    """A BMI on our codec: connects, starts data transfer, records every ASDU received."""

    params: LinkParams = field(default_factory=LinkParams)
    received: list[tuple[float, bytes]] = field(default_factory=list)
    session: LinkSession | None = None
    started: trio.Event = field(default_factory=trio.Event)

    async def run(
        self,
        host: str,
        port: int,
        *,
        start: bool = True,
        task_status: trio.TaskStatus[CodecMaster] = trio.TASK_STATUS_IGNORED,
    ) -> str:
        stream = await trio.open_tcp_stream(host, port)
        set_nodelay(stream)
        link = Link(Role.CONTROLLING, self.params, now=trio.current_time())
        self.session = LinkSession(stream, link, self._on_event, "master")
        if start:
            link.start(trio.current_time())
        task_status.started(self)
        return await self.session.run()

    async def run_started(self, nursery: trio.Nursery, host: str, port: int, attempts: int = 100) -> None:
        """Run in `nursery`, connecting again every 0.1 s until `port` listens (a relay
        still starting in another process), and return once data transfer started."""
        for attempt in range(attempts):
            try:
                await nursery.start(partial(self.run, host, port))
                break
            except OSError:
                if attempt == attempts - 1:
                    raise
                await trio.sleep(0.1)
        await self.started.wait()

    def send(self, asdu: bytes) -> None:
        assert self.session is not None
        self.session.link.send_asdu(asdu, trio.current_time())
        self.session.wake()

    def asdus(self) -> list[bytes]:
        return [asdu for _, asdu in self.received]

    def _on_event(self, session: LinkSession, event: Event) -> None:
        if isinstance(event, AsduReceived):
            self.received.append((trio.current_time(), event.asdu))
        elif isinstance(event, DataTransferStarted):
            self.started.set()


class Ed2Master:
    """A BMI with an IEC 104 Ed. 2 redundancy group of two connections to one controlled
    station, on our codec. `start(n)` sends STARTDT on connection n (the active role
    moves there); a connection the station closes is opened again at once, as a BMI
    keeps its redundancy group up.

    It confirms what it received only every `confirm_every` seconds (or at w), like a
    BMI's t2, and records what it has confirmed before the confirmation leaves, so a
    test can tell whether a UPDC was confirmed a frame before the BMI confirmed it.
    """

    def __init__(self, host: str, port: int, params: LinkParams = LinkParams(), confirm_every: float = 0.05) -> None:
        self.host, self.port = host, port
        self.params = params
        self.confirm_every = confirm_every
        self.sessions: list[LinkSession | None] = [None, None]
        self.received: list[tuple[int, float, bytes]] = []  # (connection, time, ASDU)
        self.confirmed: set[bytes] = set()  # ASDUs whose confirmation has been sent
        self.closes: list[tuple[int, str]] = []  # (connection, why) for connections that ended
        self._unconfirmed: dict[int, list[bytes]] = {0: [], 1: []}
        self._opened = [trio.Event(), trio.Event()]

    async def run(self, *, task_status: trio.TaskStatus[Ed2Master] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for n in (0, 1):
                nursery.start_soon(self._keep_open, n)
            nursery.start_soon(self._confirm_periodically)
            for opened in self._opened:
                await opened.wait()
            task_status.started(self)

    async def wait_open(self, n: int) -> LinkSession:
        while (session := self.sessions[n]) is None or session.closed:
            await trio.sleep(0.005)
        return session

    async def start(self, n: int) -> None:
        """STARTDT act on connection n (opened again first if the station closed it)."""
        session = await self.wait_open(n)
        session.link.start(trio.current_time())
        session.wake()

    def active(self) -> int | None:
        for n, session in enumerate(self.sessions):
            if session is not None and not session.closed and session.link.started:
                return n
        return None

    async def _keep_open(self, n: int) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError:
                await trio.sleep(0.05)
                continue
            set_nodelay(stream)
            link = Link(Role.CONTROLLING, self.params, manual_ack=True, now=trio.current_time())
            session = LinkSession(stream, link, partial(self._on_event, n), f"BMI connection {n}")
            self.sessions[n] = session
            self._unconfirmed[n] = []
            self._opened[n].set()
            reason = await session.run()
            self.closes.append((n, reason))
            await trio.sleep(0.01)

    def _on_event(self, n: int, session: LinkSession, event: Event) -> None:
        if isinstance(event, AsduReceived):
            self.received.append((n, trio.current_time(), event.asdu))
            self._unconfirmed[n].append(event.asdu)
            if len(self._unconfirmed[n]) >= self.params.w:
                self._confirm(n)

    def _confirm(self, n: int) -> None:
        session, pending = self.sessions[n], self._unconfirmed[n]
        if session is None or session.closed or not pending:
            return
        self.confirmed.update(pending)  # recorded before the S-frame can leave
        session.link.acknowledge(len(pending), trio.current_time())
        pending.clear()
        session.wake()

    async def _confirm_periodically(self) -> None:
        while True:
            await trio.sleep(self.confirm_every)
            for n in (0, 1):
                self._confirm(n)
