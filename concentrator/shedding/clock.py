"""The concentrator's own clock sync state, read from the kernel (adjtimex, read-only).

chrony, ntpd and systemd-timesyncd all report through the kernel's NTP state: the call
returns TIME_ERROR (5) while the clock is unsynchronised, and `maxerror` / `esterror`
carry the daemon's error bounds. Time-tag skew (5.4: 5 ms) means nothing if our own
clock is off, so the metrics export this beside the skew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from dataclasses import dataclass

TIME_ERROR = 5
_TIMEX_SIZE = 512  # struct timex is 208 octets on 64-bit Linux; room to spare
_ERRORS = struct.Struct("=8x8x8xqq")  # modes+pad, offset, freq, then maxerror, esterror (µs), 64-bit longs


@dataclass(frozen=True)
class ClockState:
    synchronized: bool | None  # None: unknown (not Linux)
    max_error: float | None  # seconds
    estimated_error: float | None


def clock_state() -> ClockState:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buffer = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
        state = libc.adjtimex(buffer)
    except (OSError, AttributeError):
        return ClockState(None, None, None)
    if state < 0 or ctypes.sizeof(ctypes.c_long) != 8:
        return ClockState(None, None, None)
    max_error, estimated = _ERRORS.unpack_from(buffer.raw)
    return ClockState(state != TIME_ERROR, max_error / 1e6, estimated / 1e6)
