"""IEC 104 link state machine (sans-I/O, time passed in)."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from .apci import (
    I_KIND,
    MAX_ASDU_LENGTH,
    S_KIND,
    SEQ_MODULO,
    START,
    FrameReader,
    FramingError,
    UFunction,
    encode_s,
    encode_u,
)
from .errors import Cause, ConcentratorError
from .link_states import RECEIVES_I, SENDS_I, TRANSITIONS, U_INPUT, Input, Role, State

__all__ = ["Cause", "Role", "State"]  # re-exported: users of the link need them

_I_HEADER = struct.Struct("6B")
_U_BY_OCTET = {int(f): f for f in UFunction}


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Windows and timers of one IEC 104 connection (seconds), IEC 60870-5-104 defaults."""

    k: int = 12
    w: int = 8
    t0: float = 30.0
    t1: float = 15.0
    t2: float = 10.0
    t3: float = 20.0

    def problems(self) -> list[tuple[str, str, object]]:
        """(key, expected, got) for every value outside what the standard allows."""
        found: list[tuple[str, str, object]] = []
        if not 1 <= self.k <= 32767:
            found.append(("k", "an integer from 1 to 32767", self.k))
        if not 1 <= self.w <= 32767:
            found.append(("w", "an integer from 1 to 32767", self.w))
        elif self.w > self.k:
            found.append(("w", f"at most k ({self.k}), the standard recommends w <= 2k/3", self.w))
        for name in ("t0", "t1", "t2", "t3"):
            value = getattr(self, name)
            if not value > 0:
                found.append((name, "a positive number of seconds", value))
        if self.t2 > 0 and self.t1 > 0 and not self.t2 < self.t1:
            found.append(("t2", f"less than t1 ({self.t1} s)", self.t2))
        return found


@dataclass(frozen=True, slots=True)
class AsduReceived:
    asdu: bytes


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The peer confirmed `count` more of the I-frames we sent, oldest first."""

    count: int


@dataclass(frozen=True, slots=True)
class DataTransferStarted:
    pass


@dataclass(frozen=True, slots=True)
class DataTransferStopped:
    pass


@dataclass(frozen=True, slots=True)
class TestFrameConfirmed:
    __test__ = False  # not a pytest test class, despite the name

    round_trip: float


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """A protocol error by the peer or an expired t1: the connection is finished."""

    cause: Cause
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.cause.value}: {self.detail}"

    def __str__(self) -> str:
        return self.reason


Event = AsduReceived | Acknowledged | DataTransferStarted | DataTransferStopped | TestFrameConfirmed | LinkFailed


class LinkError(ConcentratorError):
    """Local misuse: sending while the link does not allow it."""


def _seq_distance(newer: int, older: int) -> int:
    return (newer - older) % SEQ_MODULO


class Link:
    """One IEC 104 connection's state: sequence numbers, k/w windows, t1/t2/t3.

    Feed it received bytes and the current time; read back events and the bytes to
    send. It owns no socket and no clock. `get_timer()` says when it next needs
    `handle_timer(now)`.

    With `manual_ack`, received I-frames are confirmed only up to what the owner
    released with `acknowledge(count)`: the relay uses this on its site connections so
    that a UPDC's frame is confirmed only once the BMI has confirmed the forwarded
    copy. The w and t2 rules then belong to the BMI, whose acknowledgements we pass on
    at once.
    """

    def __init__(
        self,
        role: Role,
        params: LinkParams = LinkParams(),
        *,
        manual_ack: bool = False,
        now: float = 0.0,
    ) -> None:
        self.role = role
        self.params = params
        self._k = params.k
        # States in which an I-frame from the peer is accepted.
        self._accepting = RECEIVES_I[role]
        self.manual_ack = manual_ack
        self.state = State.STOPPED
        self.failure: LinkFailed | None = None
        self._reader = FrameReader()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        # Send side: V(S), the oldest unconfirmed N(S), and when each unconfirmed frame left.
        self.send_seq = 0
        self._peer_ack = 0
        self._sent_times: deque[float] = deque()
        # Receive side: V(R), the N(R) we last sent, and what we may confirm.
        self.recv_seq = 0
        self._acked_recv = 0
        self._releasable = 0
        self._first_unacked_at: float | None = None
        # t1 runs for the STARTDT/STOPDT act and the TESTFR act we sent; t3 from the
        # last frame received.
        self._pending_act: tuple[UFunction, float] | None = None
        self._test_sent_at: float | None = None
        self._last_received = now

    # ---------------------------------------------------------------- inspection
    @property
    def started(self) -> bool:
        return self.state is State.STARTED

    @property
    def unacknowledged(self) -> int:
        """I-frames sent and not yet confirmed by the peer."""
        return _seq_distance(self.send_seq, self._peer_ack)

    @property
    def can_send(self) -> bool:
        return self.state in SENDS_I and (self.send_seq - self._peer_ack) % SEQ_MODULO < self._k

    @property
    def unconfirmed_received(self) -> int:
        """I-frames received that we have not confirmed yet."""
        return _seq_distance(self.recv_seq, self._acked_recv)

    @property
    def buffered_input(self) -> int:
        """Octets received that do not make a whole frame yet."""
        return self._reader.buffered

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # ---------------------------------------------------------------- local actions
    def send_asdu(self, asdu: bytes, now: float) -> None:
        if not self.can_send:
            raise LinkError(f"cannot send: state {self.state.value}, {self.unacknowledged}/{self.params.k} unconfirmed")
        length = len(asdu)
        if not 0 < length <= MAX_ASDU_LENGTH:
            raise ValueError(f"ASDU of {length} octets does not fit an APDU (1..{MAX_ASDU_LENGTH})")
        confirm = self._confirmable()
        send_seq = self.send_seq
        out = self._out
        out += _I_HEADER.pack(
            START,
            length + 4,
            (send_seq << 1) & 0xFE,
            (send_seq >> 7) & 0xFF,
            (confirm << 1) & 0xFE,
            (confirm >> 7) & 0xFF,
        )
        out += asdu
        if confirm != self._acked_recv or self.manual_ack:
            self._note_confirmation_sent(confirm)
        self.send_seq = (send_seq + 1) % SEQ_MODULO
        self._sent_times.append(now)

    def start(self, now: float) -> None:
        """Controlling role: ask the peer to start data transfer (STARTDT act)."""
        if not self._step(Input.START, now):
            raise LinkError(f"cannot start: {self.role.value} link in state {self.state.value}")

    def stop(self, now: float) -> None:
        """Controlling role: ask the peer to stop data transfer. The STOPDT act leaves
        once the I-frames sent so far are confirmed (Ed. 2 pending unconfirmed stopped)."""
        if not self._step(Input.STOP, now):
            raise LinkError(f"cannot stop: {self.role.value} link in state {self.state.value}")

    def acknowledge(self, count: int, now: float) -> None:
        """Manual-ack mode: confirm `count` more received I-frames, oldest first, now."""
        if not self.manual_ack:
            raise LinkError("acknowledge() is for manual-ack links")
        if count < 0 or self._releasable + count > self.unconfirmed_received:
            unreleased = self.unconfirmed_received - self._releasable
            raise LinkError(f"cannot confirm {count} more: {unreleased} received and unreleased")
        self._releasable += count
        if self.state is not State.CLOSED and self._releasable:
            self._send_s_frame()

    # ---------------------------------------------------------------- input
    def receive_data(self, data: bytes | bytearray, now: float, max_frames: int = 0) -> bool:
        """Take received bytes. With `max_frames`, handle at most that many frames and
        return True if more whole frames may be waiting: call again (with b"") later, so
        that one peer's burst cannot hold the caller's event loop for long."""
        reader = self._reader
        if self.state is not State.CLOSED:  # a closed link buffers nothing more
            reader.feed(data)
        next_raw = reader.next_raw
        left = max_frames
        while self.state is not State.CLOSED:
            try:
                frame = next_raw()
            except FramingError as exc:
                self._fail(Cause.BAD_FRAME, str(exc))
                return False
            if frame is None:
                return False
            self._last_received = now
            kind, a, b, asdu = frame
            if kind == I_KIND:
                self._on_i(a, b, asdu, now)  # type: ignore[arg-type]
            elif kind == S_KIND:
                self._on_confirmation(b, now)
            else:
                self._on_u_frame(_U_BY_OCTET[a], now)
            left -= 1
            if left == 0:
                break
        return left == 0 and self.state is not State.CLOSED and reader.buffered > 0

    def _on_i(self, send_seq: int, recv_seq: int, asdu: bytes, now: float) -> None:
        if self.state not in self._accepting:
            self._fail(Cause.UNEXPECTED_FRAME, f"I-frame received in state {self.state.value}")
            return
        if send_seq != self.recv_seq:
            self._fail(Cause.SEQUENCE_ERROR, f"N(S)={send_seq}, expected {self.recv_seq}")
            return
        self.recv_seq = (self.recv_seq + 1) % SEQ_MODULO
        if self.unconfirmed_received > self._k:
            self._fail(Cause.TOO_MANY_UNCONFIRMED, f"{self.unconfirmed_received} I-frames unconfirmed, k is {self._k}")
            return
        if recv_seq != self._peer_ack and not self._on_confirmation(recv_seq, now):
            return
        self._events.append(AsduReceived(asdu))
        if self.manual_ack:
            return
        if self._first_unacked_at is None:
            self._first_unacked_at = now
        if self.unconfirmed_received >= self.params.w:
            self._send_s_frame()

    def _on_confirmation(self, recv_seq: int, now: float) -> bool:
        count = _seq_distance(recv_seq, self._peer_ack)
        if count > self.unacknowledged:
            self._fail(
                Cause.SEQUENCE_ERROR,
                f"N(R)={recv_seq} confirms frames never sent (V(S)={self.send_seq}, V(A)={self._peer_ack})",
            )
            return False
        if count:
            self._peer_ack = recv_seq
            for _ in range(min(count, len(self._sent_times))):
                self._sent_times.popleft()
            self._events.append(Acknowledged(count))
            if self._peer_ack == self.send_seq and self.state is State.PENDING_UNCONFIRMED_STOPPED:
                self._step(Input.ALL_CONFIRMED, now)
        return True

    def _on_u_frame(self, function: UFunction, now: float) -> None:
        if function is UFunction.TESTFR_ACT:
            self._out += encode_u(UFunction.TESTFR_CON)
        elif function is UFunction.TESTFR_CON:
            # An unsolicited confirmation is harmless: lib60870 ignores it too.
            if self._test_sent_at is not None:
                self._events.append(TestFrameConfirmed(now - self._test_sent_at))
                self._test_sent_at = None
        else:
            if function is UFunction.STOPDT_ACT and not self.manual_ack and self.unconfirmed_received:
                self._send_s_frame()  # what we received is confirmed before we stop
            if not self._step(U_INPUT[function], now):
                self._fail(Cause.UNEXPECTED_FRAME, f"{function.name} in state {self.state.value} ({self.role.value})")

    def _step(self, event: Input, now: float) -> bool:
        """Take the table's transition for `event`; False if the table has none."""
        found = TRANSITIONS[self.role].get((self.state, event))
        if found is None:
            return False
        before = self.state
        self.state, reply = found
        if event in (Input.STARTDT_CON, Input.STOPDT_CON):
            self._pending_act = None
        if reply is UFunction.STARTDT_ACT or reply is UFunction.STOPDT_ACT:
            self._send_act(reply, now)
        elif reply is not None:
            self._out += encode_u(reply)
        if self.state is State.STARTED and before is not State.STARTED:
            self._events.append(DataTransferStarted())
        elif self.state is State.STOPPED and before is not State.STOPPED:
            self._events.append(DataTransferStopped())
        elif self.state is State.PENDING_UNCONFIRMED_STOPPED and self.unacknowledged == 0:
            self._step(Input.ALL_CONFIRMED, now)
        return True

    # ---------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        p = self.params
        deadlines = [self._last_received + p.t3]
        if self._sent_times:
            deadlines.append(self._sent_times[0] + p.t1)
        if self._pending_act is not None:
            deadlines.append(self._pending_act[1] + p.t1)
        if self._test_sent_at is not None:
            deadlines.append(self._test_sent_at + p.t1)
        if self._first_unacked_at is not None:
            deadlines.append(self._first_unacked_at + p.t2)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        p = self.params
        if self._sent_times and now >= self._sent_times[0] + p.t1:
            self._fail(Cause.T1_EXPIRED, f"I-frame N(S)={self._peer_ack} not confirmed within {p.t1} s")
            return
        if self._pending_act is not None and now >= self._pending_act[1] + p.t1:
            self._fail(Cause.T1_EXPIRED, f"no confirmation of {self._pending_act[0].name} within {p.t1} s")
            return
        if self._test_sent_at is not None and now >= self._test_sent_at + p.t1:
            self._fail(Cause.T1_EXPIRED, f"no confirmation of TESTFR_ACT within {p.t1} s")
            return
        if self._first_unacked_at is not None and now >= self._first_unacked_at + p.t2:
            self._send_s_frame()
        if now >= self._last_received + p.t3:
            # Idle for t3: test the connection. Restart t3 so one test goes per period.
            self._last_received = now
            if self._test_sent_at is None:
                self._out += encode_u(UFunction.TESTFR_ACT)
                self._test_sent_at = now

    # ---------------------------------------------------------------- helpers
    def _confirmable(self) -> int:
        """The N(R) we may send: all received frames, or in manual mode what was released."""
        if self.manual_ack:
            return (self._acked_recv + self._releasable) % SEQ_MODULO
        return self.recv_seq

    def _note_confirmation_sent(self, recv_seq: int) -> None:
        self._releasable -= _seq_distance(recv_seq, self._acked_recv) if self.manual_ack else 0
        self._acked_recv = recv_seq
        if self._acked_recv == self.recv_seq:
            self._first_unacked_at = None

    def _send_s_frame(self) -> None:
        confirm = self._confirmable()
        self._out += encode_s(confirm)
        self._note_confirmation_sent(confirm)

    def _send_act(self, function: UFunction, now: float) -> None:
        self._out += encode_u(function)
        self._pending_act = (function, now)

    def _fail(self, cause: Cause, detail: str) -> None:
        self.state = State.CLOSED
        self.failure = LinkFailed(cause, detail)
        self._events.append(self.failure)
