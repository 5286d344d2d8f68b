"""Point map shared by the simulated UPDC and BMI, and small helpers for tests.

Every UPDC uses the same information object addresses (IOA); sites differ by their
common address (CA) only, as annex A40 assigns one CA per UPDC. The ranges keep the
direction readable in a capture: 1xxx measurements, 2xxx signals, 3xxx commands.
"""

from __future__ import annotations

import datetime
import socket
import struct
import threading
import time
from collections.abc import Callable

from concentrator.iec104.asdu import Cause
from concentrator.iec104.decode import TypeId

# Measurements: short float with CP56Time2a (M_ME_TF_1, type 36), kW.
IOA_TOTAL_POWER = 1001
"""Total site power (annex A40 5.1.2); may be negative on sites with generation (5.6)."""
IOA_LOAD_POWER_BASE = 1001
"""Load n (1-based) is at IOA_LOAD_POWER_BASE + n, i.e. 1002, 1003, ..."""

# Signals, time-tagged as annex A40 5.4 requires.
IOA_BREAKER = 2001
"""Breaker position, M_DP_TB_1 (type 31): ON = closed, OFF = open. One (cumulative,
annex A40 5.1.5) breaker per site."""
IOA_LOCK = 2002
"""Reclosing lock (annex A40 5.1.4), M_SP_TB_1 (type 30): True = locked."""

# Commands.
IOA_BREAKER_CMD = 3001
"""Breaker command, C_DC_NA_1 (type 46), select-before-execute: ON = close, OFF = open."""
IOA_RELEASE_CMD = 3002
"""Release ("sblocco", annex A40 5.1.4) command, C_SC_NA_1 (type 45): ON releases the lock."""


def cp56(unix: float, *, invalid: bool = False) -> bytes:
    """CP56Time2a of a UTC time (seconds since the epoch); IV set if `invalid`."""
    moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    ms = moment.second * 1000 + moment.microsecond // 1000
    return bytes((ms & 0xFF, ms >> 8, moment.minute | (0x80 if invalid else 0), moment.hour,
                  moment.day | (moment.isoweekday() << 5), moment.month, moment.year - 2000))  # fmt: skip


def _asdu(type_id: int, cause: int, ca: int, objects: list[bytes]) -> bytes:
    return bytes((type_id, len(objects), cause, 0)) + ca.to_bytes(2, "little") + b"".join(objects)


def _ioa(ioa: int) -> bytes:
    return ioa.to_bytes(3, "little")


def float_measurements(ca: int, values: list[tuple[int, float]], unix: float, *, invalid: bool = False,
                       cause: int = Cause.SPONTANEOUS) -> bytes:  # fmt: skip
    """M_ME_TF_1: (IOA, value) pairs, one time tag; QDS with IV if `invalid`."""
    qds = bytes((0x80 if invalid else 0,))
    tag = cp56(unix)
    return _asdu(TypeId.M_ME_TF_1, cause, ca, [_ioa(i) + struct.pack("<f", v) + qds + tag for i, v in values])


def double_point(ca: int, ioa: int, closed: bool | None, unix: float, *, invalid: bool = False) -> bytes:
    """M_DP_TB_1, spontaneous: ON (2) closed, OFF (1) open, None indeterminate (3)."""
    dpi = 3 if closed is None else 2 if closed else 1
    diq = dpi | (0x80 if invalid else 0)
    return _asdu(TypeId.M_DP_TB_1, Cause.SPONTANEOUS, ca, [_ioa(ioa) + bytes((diq,)) + cp56(unix)])


def single_point(ca: int, ioa: int, on: bool, unix: float, *, invalid: bool = False) -> bytes:
    """M_SP_TB_1, spontaneous."""
    siq = int(on) | (0x80 if invalid else 0)
    return _asdu(TypeId.M_SP_TB_1, Cause.SPONTANEOUS, ca, [_ioa(ioa) + bytes((siq,)) + cp56(unix)])


def breaker_command(ca: int, close: bool, *, select: bool = False, ioa: int = IOA_BREAKER_CMD) -> bytes:
    """C_DC_NA_1 activation: ON (2) close, OFF (1) open; S/E bit for the select."""
    dco = (2 if close else 1) | (0x80 if select else 0)
    return _asdu(TypeId.C_DC_NA_1, Cause.ACTIVATION, ca, [_ioa(ioa) + bytes((dco,))])


def release_command(ca: int, *, select: bool = False, ioa: int = IOA_RELEASE_CMD) -> bytes:
    """C_SC_NA_1 activation ON: the release of the shedding."""
    return _asdu(TypeId.C_SC_NA_1, Cause.ACTIVATION, ca, [_ioa(ioa) + bytes((0x01 | (0x80 if select else 0),))])


def load_power_ioa(load: int) -> int:
    """IOA of load `load` (1-based)."""
    if load < 1:
        raise ValueError("loads are numbered from 1")
    return IOA_LOAD_POWER_BASE + load


def is_i_frame(apdu: bytes) -> bool:
    return len(apdu) > 6 and apdu[0] == 0x68 and not apdu[2] & 0x01


def i_frame_asdus(frames: list[tuple[float, bytes]]) -> list[bytes]:
    """ASDUs (frame[6:]) of the I-frames among captured (timestamp, APDU) pairs."""
    return [frame[6:] for _, frame in frames if is_i_frame(frame)]


class FrameCapture:
    """Thread-safe list of (time.monotonic(), APDU) filled from c104's threads.

    c104 runs raw callbacks on its own threads; readers (tests, trio code) take
    snapshots under the lock instead of iterating the live list.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[tuple[float, bytes]] = []

    def append(self, frame: bytes) -> None:
        stamp = time.monotonic()
        with self._lock:
            self._frames.append((stamp, bytes(frame)))

    def snapshot(self) -> list[tuple[float, bytes]]:
        with self._lock:
            return list(self._frames)

    def asdus(self) -> list[bytes]:
        return i_frame_asdus(self.snapshot())

    def asdus_since(self, mark: int) -> list[bytes]:
        """ASDUs of the I-frames captured after the first `mark` frames."""
        with self._lock:
            frames = self._frames[mark:]
        return i_frame_asdus(frames)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0 and release it).

    c104's Server needs a concrete port up front and reports back the one it was
    given, so port 0 cannot be passed through to it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
