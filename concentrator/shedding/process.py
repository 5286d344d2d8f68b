"""The compliance monitor's process: decodes the relay's copies, judges, records, serves
metrics. Started by `ShedFeeder` (tap.py) with the configuration on stdin, then frames.

Tasks: the reader (frames -> monitor), the ticker (closes 4-second slots, writes the
record in one transaction per TICK), the trip poller (the kernel's multicast forwarding
counters, read-only: no socket joins a group) and the daily pruning. Runs at a lower
priority than the relay (tap.CHILD), as the MQTT mirror does.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import struct
import time

import trio

from monitoring.primitives import serve

from .clock import clock_state
from .config import SheddingConfig
from .metrics import SheddingMetrics
from .monitor import SheddingMonitor
from .record import DAY, ShedRecord
from .tap import DROPPED, HEAD

log = logging.getLogger("shedding")

TICK = 0.25  # seconds between slot checks and record writes
TRIP_POLL = 0.05  # seconds between reads of the kernel's multicast counters


def trip_counters(groups: set[str]) -> dict[str, int]:
    """Packets the kernel forwarded per trip group (summed over sources), from the
    counters of whichever trip path engine runs here (netconfig.tripreport)."""
    from netconfig.tripreport import forwarded_by_group

    forwarded = forwarded_by_group()
    return {group: forwarded.get(group, 0) for group in groups}


class MonitorService:
    def __init__(self, config: SheddingConfig) -> None:
        self.config = config
        self.record = ShedRecord(config.database, config.retention_days)
        self.monitor = SheddingMonitor(config, time.time(), next_event_id=self.record.next_event_id())
        self.metrics = SheddingMetrics(config, self.monitor)
        self.groups = {s.trip_group for s in config.sites if s.trip_group}

    def feed(self, site: str, asdu: bytes, wall: float) -> None:
        if site == DROPPED:
            self.metrics.dropped += int.from_bytes(asdu, "big")
        elif site:
            self.metrics.asdus += 1
            self.monitor.site_asdu(site, asdu, wall)
        else:
            self.metrics.asdus += 1
            self.monitor.bmi_asdu(asdu, wall)

    def flush(self) -> None:
        self.monitor.tick(time.time())
        records = self.monitor.take_records()
        if not records:
            return
        started = time.perf_counter()
        try:
            self.record.write(records)
        except Exception:  # a full disk must not stop the metrics or the live verdicts
            self.metrics.record_errors += 1
            log.exception("writing %d records failed", len(records))
        self.metrics.write_seconds = time.perf_counter() - started
        self.metrics.written += len(records)

    async def ticker(self) -> None:
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
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = bytearray()

    async def read_exactly(size: int) -> bytes:
        while len(buffer) < size:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                raise SystemExit(0)  # the relay closed the pipe: stop
            buffer.extend(chunk)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    (length,) = struct.unpack(">I", await read_exactly(4))
    config: SheddingConfig = pickle.loads(await read_exactly(length))  # noqa: S301 (our parent's pipe)
    try:
        service = MonitorService(config)
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
            while True:
                size, wall, name_length = HEAD.unpack(await read_exactly(HEAD.size))
                rest = await read_exactly(size - 9)
                service.feed(rest[:name_length].decode(), rest[name_length:], wall)
    finally:
        service.flush()
        service.record.close()
        server.close()


def main() -> None:
    """Run by `tap.CHILD`, which lowers the priority first (as the MQTT mirror's child)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s shedding-monitor: %(message)s")
    try:
        trio.run(_main)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        if not group.subgroup(SystemExit):
            raise


if __name__ == "__main__":
    main()
