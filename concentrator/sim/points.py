"""Point map shared by the simulated UPDC and BMI, and small helpers for tests.

Every UPDC uses the same information object addresses (IOA); sites differ by their
common address (CA) only, as annex A40 assigns one CA per UPDC. The ranges keep the
direction readable in a capture: 1xxx measurements, 2xxx signals, 3xxx commands.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

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

# Type identifications used here, for reading captures without c104.
TYPE_M_SP_TB_1 = 30
TYPE_M_DP_TB_1 = 31
TYPE_M_ME_TF_1 = 36
TYPE_C_DC_NA_1 = 46
TYPE_C_IC_NA_1 = 100
TYPE_C_CS_NA_1 = 103

# Causes of transmission (bits 0-5 of the first COT octet).
COT_PERIODIC = 1
COT_SPONTANEOUS = 3
COT_ACTIVATION = 6
COT_ACTIVATION_CON = 7
COT_ACTIVATION_TERMINATION = 10
COT_RETURN_INFO_REMOTE = 11
COT_INTERROGATED_BY_STATION = 20
COT_UNKNOWN_CA = 46

BROADCAST_CA = 0xFFFF


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
