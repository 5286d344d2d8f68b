"""APCI codec: IEC 60870-5-104 frames over a TCP byte stream, no I/O.

An APDU is 0x68, a length octet L (4..253, the octets that follow), four control
octets and, for I-frames only, an ASDU. The ASDU is carried as the exact bytes that
arrived: nothing here re-encodes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import ConcentratorError

START = 0x68
MIN_LENGTH = 4
MAX_LENGTH = 253
MAX_ASDU_LENGTH = MAX_LENGTH - 4
SEQ_MODULO = 32768


class FramingError(ConcentratorError, ValueError):
    """The peer sent bytes that are not a valid APDU: the connection must be closed."""


class UFunction(IntEnum):
    """First control octet of the six U-frames."""

    STARTDT_ACT = 0x07
    STARTDT_CON = 0x0B
    STOPDT_ACT = 0x13
    STOPDT_CON = 0x23
    TESTFR_ACT = 0x43
    TESTFR_CON = 0x83


_U_FUNCTIONS = frozenset(int(f) for f in UFunction)


@dataclass(frozen=True, slots=True)
class IFrame:
    send_seq: int
    recv_seq: int
    asdu: bytes


@dataclass(frozen=True, slots=True)
class SFrame:
    recv_seq: int


@dataclass(frozen=True, slots=True)
class UFrame:
    function: UFunction


Frame = IFrame | SFrame | UFrame


def encode_i(send_seq: int, recv_seq: int, asdu: bytes) -> bytes:
    if not 0 < len(asdu) <= MAX_ASDU_LENGTH:
        raise ValueError(f"ASDU of {len(asdu)} octets does not fit an APDU (1..{MAX_ASDU_LENGTH})")
    return (
        bytes(
            (
                START,
                len(asdu) + 4,
                (send_seq << 1) & 0xFE,
                (send_seq >> 7) & 0xFF,
                (recv_seq << 1) & 0xFE,
                (recv_seq >> 7) & 0xFF,
            )
        )
        + asdu
    )


def encode_s(recv_seq: int) -> bytes:
    return bytes((START, 4, 0x01, 0x00, (recv_seq << 1) & 0xFE, (recv_seq >> 7) & 0xFF))


def encode_u(function: UFunction) -> bytes:
    return bytes((START, 4, function, 0, 0, 0))


# Frames as plain tuples for the hot path (`FrameReader.next_raw`, `Link`): no object
# per frame beyond the tuple. Kinds:
I_KIND, S_KIND, U_KIND = 0, 1, 2
RawFrame = tuple[int, int, int, bytes | None]
"""(I_KIND, N(S), N(R), ASDU) | (S_KIND, 0, N(R), None) | (U_KIND, function octet, 0, None)"""


def _decode_raw(length: int, buf: bytes | bytearray, at: int) -> RawFrame:
    """Decode the control field (and ASDU) of one APDU whose length octet is `length`,
    with the control field starting at `at` in `buf`."""
    o1 = buf[at]
    if not o1 & 0x01:
        if length == MIN_LENGTH:
            raise FramingError("I-frame without an ASDU")
        o3 = buf[at + 2]
        if o3 & 0x01:
            raise FramingError(f"I-frame with bit 0 of control octet 3 set (0x{o3:02x})")
        asdu = buf[at + 4 : at + length]
        return (
            I_KIND,
            (o1 >> 1) | (buf[at + 1] << 7),
            (o3 >> 1) | (buf[at + 3] << 7),
            asdu if type(asdu) is bytes else bytes(asdu),
        )
    o2, o3, o4 = buf[at + 1], buf[at + 2], buf[at + 3]
    if length != MIN_LENGTH:
        raise FramingError(f"S- or U-frame with length {length}, expected 4")
    if o1 == 0x01:
        if o2 != 0 or o3 & 0x01:
            raise FramingError(f"malformed S-frame control field {o1:02x} {o2:02x} {o3:02x} {o4:02x}")
        return (S_KIND, 0, (o3 >> 1) | (o4 << 7), None)
    if o1 in _U_FUNCTIONS and o2 == 0 and o3 == 0 and o4 == 0:
        return (U_KIND, o1, 0, None)
    raise FramingError(f"unknown U-frame control field {o1:02x} {o2:02x} {o3:02x} {o4:02x}")


def frame_of(raw: RawFrame) -> Frame:
    kind, a, b, asdu = raw
    if kind == I_KIND:
        assert asdu is not None
        return IFrame(a, b, asdu)
    if kind == S_KIND:
        return SFrame(b)
    return UFrame(UFunction(a))


def _decode_body(length: int, buf: bytes | bytearray, at: int) -> Frame:
    return frame_of(_decode_raw(length, buf, at))


def decode(apdu: bytes) -> Frame:
    """Decode exactly one whole APDU."""
    if len(apdu) < 2 + MIN_LENGTH or apdu[0] != START or apdu[1] != len(apdu) - 2:
        raise FramingError(f"not one whole APDU: {apdu[:8].hex()}")
    if apdu[1] > MAX_LENGTH:
        raise FramingError(f"APDU length {apdu[1]} above {MAX_LENGTH}")
    return _decode_body(apdu[1], apdu, 2)


class FrameReader:
    """Cuts a TCP byte stream into frames; bytes may arrive split anywhere."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        # Usually the received chunk itself (bytes: an ASDU is then sliced out with one
        # copy); only a frame split across chunks makes a new buffer.
        self._buffer: bytes = b""
        self._offset = 0

    def feed(self, data: bytes | bytearray) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        if self._offset >= len(self._buffer):
            self._buffer = data
        else:
            # Drop what was consumed only when new bytes come: one compaction per read,
            # not one per frame.
            self._buffer = self._buffer[self._offset :] + data
        self._offset = 0

    @property
    def buffered(self) -> int:
        """Octets received that do not yet make a whole frame."""
        return len(self._buffer) - self._offset

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive.

        Raises FramingError at the first invalid octet; the stream cannot be
        resynchronised after that, so the caller closes the connection.
        """
        raw = self.next_raw()
        return None if raw is None else frame_of(raw)

    def next_raw(self) -> RawFrame | None:
        """`next_frame` as a plain tuple (see `RawFrame`), for the hot path."""
        buf, at = self._buffer, self._offset
        available = len(buf) - at
        if available < 1:
            return None
        if buf[at] != START:
            raise FramingError(f"start octet 0x{buf[at]:02x}, expected 0x68")
        if available < 2:
            return None
        length = buf[at + 1]
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            raise FramingError(f"APDU length {length}, expected {MIN_LENGTH}..{MAX_LENGTH}")
        if available < length + 2:
            return None
        frame = _decode_raw(length, buf, at + 2)
        self._offset = at + 2 + length
        return frame
