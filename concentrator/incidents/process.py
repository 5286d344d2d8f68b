"""The incident process: the register's one writer. Started by `IncidentFeeder` (tap.py)
with the configuration on stdin, then the relay's link events and ASDU copies.

Tasks: the reader (frames -> detector), the ticker (netd's state file, the detector's
deadlines, the requests of the command line, every TICK), the sender (spooled notices
to the SMTP relay, each retried with a back-off until the relay accepts it) and the
metrics server. Runs at a lower priority than the relay, as every sidecar
(concentrator/sidecar.py).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time

import trio

from monitoring.incident_metrics import IncidentMetrics
from monitoring.primitives import serve

from ..sidecar import ChildPipe, run_child
from .config import IncidentsConfig
from .counters import Counters
from .detector import Detector, LinkState, Opened, Restored
from .notices import send
from .registrar import Registrar
from .requests import handle_requests
from .store import Register, WriterLock
from .tap import ASDU, DROPPED, LINK

log = logging.getLogger("incidents")

TICK = 0.2  # s between deadline checks and reads of netd's state file
LAG = 0.2  # s: the ticker judges this far behind the wall clock, so that the relay's
# copies stamped before (fed every 50 ms) are read before a grace is judged expired
SEND_POLL = 0.5  # s between looks for notices due
MAINTENANCE_REFRESH = 10.0  # s


class IncidentService:
    def __init__(self, config: IncidentsConfig, now: float) -> None:
        self.config = config
        self.lock = WriterLock(config.database)
        self.lock.acquire()
        self.register = Register(config.database)
        self.registrar = Registrar(config, self.register)
        starts = {key: self.register.start(incident_id) for key, incident_id in self.registrar.open.items()}
        self.detector = Detector(config, now, starts)
        self.detector.set_maintenance(self.register.maintenance_windows(), now)
        self.counters = Counters()
        self.metrics = IncidentMetrics(config, self.counters)
        self._maintenance_read = now
        self.apply(now)

    def feed(self, kind: int, site: str, payload: bytes, wall: float) -> None:
        if kind == ASDU:
            self.counters.asdus += 1
            self.detector.asdu(site, payload, wall)
        elif kind == LINK:
            state, _, detail = payload.decode(errors="replace").partition("\0")
            self.detector.link(site or None, LinkState(state), detail, wall)
        elif kind == DROPPED:
            self.counters.dropped += int.from_bytes(payload, "big")
        self.apply(wall)

    def apply(self, now: float) -> None:
        """The detector's decisions into the register and the spool."""
        while (action := self.detector.next_action()) is not None:
            if isinstance(action, Opened):
                incident_id = self.registrar.opened(action, time.time())
                log.warning("site %s: incident %d opened (%s since %s)", action.site, incident_id, action.kind,
                            time.strftime("%H:%M:%S", time.gmtime(action.start)))  # fmt: skip
            elif isinstance(action, Restored):
                restored = self.registrar.restored(action, time.time())
                if restored is not None:
                    log.info("site %s: incident %d restored (%s): %s", action.site, restored, action.kind,
                             action.proposed_en)  # fmt: skip

    def poll_netd(self) -> None:
        """netd's view of the paths. netd rewrites its state file (atomically) on every
        change: the file's modification time is when it decided, the evidence's time."""
        path = self.config.netd_state
        if path is None:
            return
        try:
            with open(path) as f:
                written = min(os.fstat(f.fileno()).st_mtime, time.time())
                state = json.load(f)
        except (OSError, ValueError):
            return  # netd not started yet, or rewriting: the next tick reads it
        if not state.get("ready"):
            return
        for name, link in state.get("links", {}).items():
            self.detector.paths(name, bool(link.get("all_down")), written)

    def tick(self) -> None:
        now = time.time() - LAG
        self.poll_netd()
        if now - self._maintenance_read >= MAINTENANCE_REFRESH:
            self.detector.set_maintenance(self.register.maintenance_windows(), now)
            self._maintenance_read = now
        self.detector.handle_timer(now)
        self.apply(now)
        if handle_requests(self.config.spool, self.registrar, time.time()):
            self.detector.set_maintenance(self.register.maintenance_windows(), now)

    async def ticker(self) -> None:
        while True:
            await trio.sleep(TICK)
            self.tick()

    async def sender(self) -> None:
        smtp = self.config.smtp
        if smtp is None:
            return
        while True:
            for notice in self.registrar.due(time.time()):
                data = self.registrar.eml(notice)
                try:
                    await trio.to_thread.run_sync(send, smtp, data)
                except Exception as exc:  # refused, down, TLS: all mean "not sent"
                    self.counters.send_failures += 1
                    retry = self.registrar.failed(notice, f"{type(exc).__name__}: {exc}", time.time())
                    log.warning("notice %s not sent: %s; retrying in %.0f s", notice.name, exc, retry - time.time())
                else:
                    self.registrar.sent(notice, time.time())
                    log.info("notice %s sent to %s", notice.name, ", ".join(smtp.recipients))
            await trio.sleep(SEND_POLL)


async def _main() -> None:
    pipe = ChildPipe()
    config: IncidentsConfig | None = await pipe.config()
    if config is None:
        return  # the relay closed the pipe first
    try:
        os.makedirs(config.spool, exist_ok=True)
        service = IncidentService(config, time.time())
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot open the register %s or the spool %s: %s (both must be writable by this user)",
                  config.database, config.spool, exc)  # fmt: skip
        raise SystemExit(2) from None
    server = serve([service.metrics], config.metrics_listen)
    log.info("incident register %s, metrics on %s", config.database, server.url)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.ticker)
            nursery.start_soon(service.sender)
            async for record in pipe.records():
                service.feed(record.kind, record.site, record.body, record.when)
            nursery.cancel_scope.cancel()  # the relay closed the pipe: stop
    finally:
        service.register.close()
        service.lock.close()
        server.close()


def main() -> None:
    """Run by the relay's sidecar (tap.IncidentFeeder), which lowers the priority first."""
    run_child("incidents", _main)
