"""Lines about a repeated condition, limited: the first logged, the rest counted and
summed up once per interval (README, "Repeated log lines are limited"). Used by the relay's core and driver, whose
logger it writes to."""

from __future__ import annotations

import logging

log = logging.getLogger("concentrator.relay")

# The same warning about the same site at most this often (seconds); the rest are counted.
LOG_INTERVAL = 10.0


class LimitedLog:
    """Lines about a repeated condition (keyed, e.g. by site or peer): the first is logged,
    the others within LOG_INTERVAL are counted, and once the interval has passed one
    summary (the latest line, with the count) is logged, by the next line of that key or
    by `flush(now)` at `deadline()`, whichever comes first. Keys with nothing pending are
    forgotten after LOG_INTERVAL once there are more than MAX_KEYS, so that peers from
    ever new addresses cannot grow it."""

    MAX_KEYS = 1024

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, tuple[int, int, str, tuple[object, ...]]] = {}  # key: count, level, latest line

    def warning(self, key: str, now: float, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, now, message, *args)

    def info(self, key: str, now: float, message: str, *args: object) -> None:
        self.log(logging.INFO, key, now, message, *args)

    def log(self, level: int, key: str, now: float, message: str, *args: object) -> None:
        if now - self._last.get(key, -LOG_INTERVAL) < LOG_INTERVAL:
            count = self._skipped[key][0] if key in self._skipped else 0
            self._skipped[key] = (count + 1, level, message, args)
            return
        if len(self._last) > self.MAX_KEYS:
            self._last = {k: t for k, t in self._last.items() if k in self._skipped or now - t < LOG_INTERVAL}
        self._last[key] = now
        skipped = self._skipped.pop(key, None)
        if skipped:
            message += f" ({skipped[0]} more like it not logged)"
        log.log(level, message, *args)

    def deadline(self) -> float | None:
        """When the earliest pending summary is due; None if none is."""
        return min((self._last[key] + LOG_INTERVAL for key in self._skipped), default=None)

    def flush(self, now: float) -> None:
        """Log the summaries that are due: the latest line of each such key, with how many
        like it were left out since the line before."""
        for key in [k for k in self._skipped if now - self._last[k] >= LOG_INTERVAL]:
            count, level, message, args = self._skipped.pop(key)
            self._last[key] = now
            log.log(level, f"{message} ({count} like it in {LOG_INTERVAL:.0f} s, this the latest)", *args)
