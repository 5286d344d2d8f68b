"""The compliance monitor's process: decodes the relay's copies, judges, records, serves
metrics. Started by `ShedFeeder` (tap.py) with the configuration on stdin, then records.

Tasks: the reader (frames -> monitor), the ticker (closes 4-second slots, writes the
record in one transaction per TICK, with the last copy applied), the trip poller (the
kernel's multicast forwarding counters, read-only: no socket joins a group) and the daily
pruning. A restarted process resumes from its record and the feeder's ring (tap.py says
how); the ticker waits until the ring's copies are applied. Runs at a lower
priority than the relay, as every sidecar (concentrator/sidecar.py).
"""

from __future__ import annotations

import logging
import sqlite3
import time

import trio

from monitoring.primitives import serve
from monitoring.shedding_metrics import SheddingMetrics

from ..sidecar import ChildPipe, run_child
from .clock import clock_state
from .config import SheddingConfig
from .monitor import MAX_AGE_PERIODS, Resume, SheddingMonitor
from .record import DAY, Applied, ShedRecord
from .tap import DROPPED, DROPPED_BODY, Hello
from .verdict import Interruption, utc

log = logging.getLogger("shedding")

TICK = 0.25  # seconds between slot checks and record writes
TRIP_POLL = 0.05  # seconds between reads of the kernel's multicast counters
# Slots close this long after their end, so that copies on their way (the tap, the
# feeder's 50 ms, the pipe) are counted in the slot they belong to.
SETTLE = 0.5


def trip_counters(groups: set[str]) -> dict[str, int]:
    """Packets the kernel forwarded per trip group (summed over sources), from the
    counters of whichever trip path engine runs here (netconfig.trip.report)."""
    from netconfig.trip.report import forwarded_by_group

    forwarded = forwarded_by_group()
    return {group: forwarded.get(group, 0) for group in groups}


class MonitorService:
    """The monitor with its record and the copies from the relay (tap.py's protocol)."""

    def __init__(self, config: SheddingConfig, hello: Hello) -> None:
        self.config = config
        self.hello = hello
        self.record = ShedRecord(config.database, config.retention_days)
        now = time.time()
        applied = self.record.applied()
        resume = self.record.resume(config, now)
        self.monitor = SheddingMonitor(config, now, resume=resume)
        self.metrics = SheddingMetrics(config, self.monitor)
        self.groups = {s.trip_group for s in config.sites if s.trip_group}
        # Copies of this feeder up to `seen` were applied before a restart: they only
        # restore measured values. `last` (sequence number, tap time) is the copy the next
        # write records as applied last: everything before it is applied or recorded lost.
        same = applied is not None and applied.epoch == hello.epoch
        self.seen = applied.seq if same and applied is not None else 0
        self.last = (hello.first_seq - 1, now)
        self.replaying = hello.replay
        self.replayed = trio.Event()
        self.record_applied: Applied | None = None
        if not self.replaying:
            self.replayed.set()
        if resume is not None:
            self._restarted(resume, applied, now)

    def _restarted(self, resume: Resume, applied: Applied | None, now: float) -> None:
        """Whether the copies that follow continue what the record holds; if not, the span
        that may be lost is an interruption (slots flagged, sheddings not judged)."""
        hello, look_back = self.hello, MAX_AGE_PERIODS * self.config.sample_period
        since = applied.at if applied is not None else resume.next_slot - self.config.sample_period
        if (applied is not None and applied.epoch == hello.epoch and hello.first_seq <= applied.seq + 1
                and hello.complete_from <= resume.next_slot - look_back):  # fmt: skip
            self.last = (applied.seq, applied.at)
            cause = f"monitor restarted at {utc(now)}; resumed from the relay's copies, none lost"
            self.monitor.interrupted(Interruption(since, now, cause, 0))
            log.info("record %s resumed at %s with no copy lost", self.config.database, utc(resume.next_slot))
            return
        lost = None
        if applied is not None and applied.epoch == hello.epoch and hello.first_seq > applied.seq + 1:
            lost = hello.first_seq - applied.seq - 1
        until = max(hello.complete_from, since)
        cause = f"monitor restarted at {utc(now)}; copies from {utc(since)} to {utc(until)} lost"
        self.monitor.interrupted(Interruption(since, until, cause, lost))
        log.warning("record %s: %s", self.config.database, cause)

    def feed(self, seq: int, site: str, asdu: bytes, wall: float) -> None:
        if self.replaying:
            self.replaying -= 1
            if not self.replaying:
                self.replayed.set()
        if seq <= self.seen:  # applied before the restart
            if site and site != DROPPED:
                self.monitor.site_values(site, asdu, wall)
            return
        self.last = (seq, wall)
        if site == DROPPED:
            count, first, last = DROPPED_BODY.unpack(asdu)
            self.metrics.dropped += count
            cause = f"tap queue full: {count} copies from {utc(first)} to {utc(last)} dropped"
            self.monitor.interrupted(Interruption(first, last, cause, count))
        elif site:
            self.metrics.asdus += 1
            self.monitor.site_asdu(site, asdu, wall)
        else:
            self.metrics.asdus += 1
            self.monitor.bmi_asdu(asdu, wall)

    def flush(self) -> None:
        self.monitor.tick(time.time() - SETTLE)
        records = self.monitor.take_records()
        applied = Applied(self.hello.epoch, *self.last, self.monitor.next_slot)
        if not records and applied == self.record_applied:
            return
        started = time.perf_counter()
        try:
            written, flagged = self.record.write(records, applied)
        except Exception:  # a full disk must not stop the metrics or the live verdicts
            self.metrics.record_errors += 1
            log.exception("writing %d records failed", len(records))
        else:
            self.record_applied = applied
            self.metrics.written += written
            self.metrics.flagged += flagged
        self.metrics.write_seconds = time.perf_counter() - started

    async def ticker(self) -> None:
        await self.replayed.wait()  # slots close after the copies sent again are applied
        while True:
            await trio.sleep(TICK)
            self.flush()
            self.metrics.clock = clock_state()

    async def trip_poller(self) -> None:
        if not self.groups:
            return
        last = trip_counters(self.groups)
        while True:
            await trio.sleep(TRIP_POLL)
            now = trip_counters(self.groups)
            for group, count in now.items():
                if count > last[group]:
                    self.monitor.trip(group, time.time())
            last = now

    async def pruner(self) -> None:
        while True:
            removed = self.record.prune(time.time())
            log.info("record pruned: %d rows older than %d days", removed, self.config.retention_days)
            await trio.sleep(DAY)


async def _main() -> None:
    pipe = ChildPipe()
    setup = await pipe.config()
    if setup is None:
        return  # the relay closed the pipe first
    hello: Hello
    config: SheddingConfig
    config, hello = setup
    try:
        service = MonitorService(config, hello)
    except sqlite3.Error as exc:
        log.error("cannot open the record %s: %s (its directory must exist and be writable by this user)",
                  config.database, exc)  # fmt: skip
        raise SystemExit(2) from None
    server = serve([service.metrics], config.metrics_listen)
    log.info("shedding metrics on %s", server.url)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.ticker)
            nursery.start_soon(service.trip_poller)
            nursery.start_soon(service.pruner)
            async for record in pipe.records():
                service.feed(record.seq, record.site, record.body, record.when)
            nursery.cancel_scope.cancel()  # the relay closed the pipe: stop
    finally:
        service.flush()
        service.record.close()
        server.close()


def main() -> None:
    """Run by the relay's sidecar (tap.ShedFeeder), which lowers the priority first."""
    run_child("shedding-monitor", _main)


if __name__ == "__main__":
    main()
