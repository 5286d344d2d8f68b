"""Run the publisher in a process of its own, fed through a pipe.

Measured here (12 sites, 4,800 ASDU/s of three QoS 2 objects each): with the publisher in
the relay's trio loop, decoding, JSON, TLS and the QoS 2 handshakes took a whole core
and the relay's median forwarding latency went from 0.2 to 0.6 ms. So the relay's
process keeps only the O(1) append (`MirrorQueue.push`) and a feeder task that writes
batches to the child's stdin; the child decodes and publishes on the other core.

Frames parent -> child are the sidecar's (concentrator/sidecar.py): the `MqttConfig`, then
records of a wall time, a kind, a site name and a body. Kind 0: the body is an ASDU the
relay received at that time. Kind 1: the body is the site's status (JSON: state, detail),
as the relay's statistics say since that time.
Child -> parent: one JSON line of counters every STATUS_PERIOD seconds (the mirror's own
back channel, on the child's stdout).

If the pipe is full (the child, or the broker behind it, is slow) the feeder waits, and
meanwhile the bounded queue in the relay drops its oldest cyclic measurements.

Stopping: the sidecar closes the pipe (or the child gets SIGTERM/SIGINT); the child
publishes its retained status "offline", sends DISCONNECT and exits; after
STOP_TIMEOUT the sidecar kills it. A child that exits is started again after
RESTART_DELAY, always the same: its broker's outages are handled inside it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict
from typing import TYPE_CHECKING

import trio

from ..sidecar import Backoff, Child, ChildPipe, Sidecar, command, encode
from .config import MqttConfig
from .publisher import MqttMirror, SiteStatus
from .queue import MirrorQueue
from .stats import MirrorStats

if TYPE_CHECKING:
    from concentrator.relay.stats import RelayStats

log = logging.getLogger(__name__)

STATUS_PERIOD = 0.2
BATCH = 256  # ASDUs per write at most
RESTART_DELAY = 1.0
STOP_TIMEOUT = 5.0  # for the child's goodbye to the broker, at a low CPU priority
CHILD = "concentrator.mirror.process"  # the child's module (sidecar.command)
KIND_ASDU, KIND_STATUS = 0, 1
# Copied from the child as they are; `dropped` and `lost` add to the relay queue's own.
_CHILD_FIELDS = ("sent_unconfirmable", "published_qos2", "refused", "decode_errors", "connects", "connect_failures",
                 "connected", "last_error", "in_flight", "quota_retries")  # fmt: skip


def site_statuses(relay: RelayStats) -> dict[str, tuple[str, str]]:
    """site -> (state, detail) as the relay's statistics say now. The relay disconnects
    every site while no BMI connection is started (end-to-end acknowledgement), so then
    the reason a site sends nothing is the uplink, whatever its own state."""
    uplink_started = bool(relay.uplink.active_peer)
    out = {}
    for name, site in relay.sites.items():
        if not uplink_started:
            out[name] = ("uplink not started", site.state)
        elif site.state == "started":
            out[name] = ("online", site.state)
        else:
            out[name] = ("site down", site.state)
    return out


class MirrorProcess:
    """In the relay: feeds the child from `queue` and the site states from the relay's
    statistics, restarts the child if it dies, and copies its counters into the relay's
    statistics (`relay_stats.mirror`)."""

    def __init__(self, config: MqttConfig, queue: MirrorQueue, relay_stats: RelayStats) -> None:
        assert relay_stats.mirror is not None
        self.config = config
        self.queue = queue
        self.relay_stats = relay_stats
        self.stats: MirrorStats = relay_stats.mirror
        # The child logs (to the relay's stderr) at the relay's level.
        argv = command(CHILD, logging.getLevelName(log.getEffectiveLevel()))
        policy = Backoff(first=RESTART_DELAY, factor=1.0)
        self.sidecar = Sidecar(
            "MQTT mirror", argv, lambda: config, policy=policy, stdout=True, stop_timeout=STOP_TIMEOUT
        )
        self.wall_offset = 0.0

    async def run(self) -> None:
        for problem in self.config.tls_dates:
            log.error("MQTT mirror: %s (the broker will refuse the connection)", problem)
        self.wall_offset = time.time() - trio.current_time()
        await self.sidecar.run(self._session)

    async def _session(self, child: Child) -> None:
        assert child.stdout is not None
        link = _ChildLink(self, child, self.wall_offset)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._status, child.stdout, link)
                nursery.start_soon(link.watch_sites)
                await link.feed()
        finally:
            self.stats.connected = False

    async def _status(self, stdout: trio.abc.ReceiveStream, child: _ChildLink) -> None:
        """Copy the child's counters; its own queue's drops and losses add to ours."""
        buffer = b""
        seen_dropped = 0
        seen_lost: dict[str, int] = {}
        stats = self.stats
        async for chunk in stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                status = json.loads(line)
                for name in _CHILD_FIELDS:
                    setattr(stats, name, status[name])
                stats.child_queue_length = status["queue_length"]
                stats.dropped += status["dropped"] - seen_dropped
                seen_dropped = status["dropped"]
                for key, count in status["lost"].items():
                    stats.lost[key] = stats.lost.get(key, 0) + count - seen_lost.get(key, 0)
                    seen_lost[key] = count
                child.child_report(status["received"], status["oldest_unpublished"])
        raise trio.BrokenResourceError("the mirror process exited")


class _ChildLink:
    """The pipe to one child: what was written and not yet read by it, for staleness."""

    def __init__(self, owner: MirrorProcess, child: Child, wall_offset: float) -> None:
        self.owner = owner
        self.child = child
        self.wall_offset = wall_offset
        self.written = 0  # ASDUs written to the pipe
        self.in_pipe: deque[tuple[int, float]] = deque()  # (written after a batch, its oldest time)
        self.child_oldest: float | None = None

    async def feed(self) -> None:
        queue, offset = self.owner.queue, self.wall_offset
        while True:
            await queue.wait()
            chunks: list[bytes] = []
            oldest: float | None = None
            while len(chunks) < BATCH and (entry := queue.pop()) is not None:
                received = entry.received_at + offset
                oldest = received if oldest is None else oldest
                chunks.append(encode(entry.site, entry.asdu, received, kind=KIND_ASDU))
            if oldest is None:
                continue
            self.written += len(chunks)
            self.in_pipe.append((self.written, oldest))
            await self.child.send(chunks)

    async def watch_sites(self) -> None:
        """Send each site's status when it changes (all of them to a new child), and
        keep the staleness figure current even when the child says nothing."""
        sent: dict[str, tuple[str, str]] = {}
        while True:
            now = time.time()
            changed = {site: s for site, s in site_statuses(self.owner.relay_stats).items() if sent.get(site) != s}
            if changed:
                frames = [
                    encode(site, json.dumps({"state": state, "detail": detail}).encode(), now, kind=KIND_STATUS)
                    for site, (state, detail) in changed.items()
                ]
                await self.child.send(frames)
                sent.update(changed)
            self._update_staleness()
            await trio.sleep(STATUS_PERIOD)

    def child_report(self, received: int, oldest: float | None) -> None:
        while self.in_pipe and self.in_pipe[0][0] <= received:
            self.in_pipe.popleft()
        self.child_oldest = oldest
        self._update_staleness()

    def _update_staleness(self) -> None:
        relay_oldest = self.owner.queue.oldest()
        candidates = (
            self.child_oldest,
            self.in_pipe[0][1] if self.in_pipe else None,
            None if relay_oldest is None else relay_oldest + self.wall_offset,
        )
        times = [t for t in candidates if t is not None]
        self.owner.stats.oldest_unpublished = min(times) if times else None


# --------------------------------------------------------------------------- the child


async def _child_main() -> None:
    pipe = ChildPipe()
    stdout = trio.lowlevel.FdStream(os.dup(1))
    config: MqttConfig | None = await pipe.config()
    if config is None:
        return  # the relay closed the pipe first
    stats = MirrorStats()
    queue = MirrorQueue(config.queue_limit, stats, frozenset(config.critical))
    mirror = MqttMirror(config, queue, stats)
    received = 0

    async def reader() -> None:
        nonlocal received
        async for record in pipe.records():
            if record.kind == KIND_ASDU:
                queue.push(record.body, record.site, record.when)
                received += 1
            else:
                status = json.loads(record.body)
                mirror.set_site_status(record.site, SiteStatus(status["state"], status["detail"], record.when))
        mirror.stopping.set()

    async def report() -> None:
        snapshot = asdict(stats)
        snapshot["received"] = received
        snapshot["oldest_unpublished"] = mirror.oldest_unpublished()
        snapshot["in_flight"] = mirror.ledger.in_flight
        await stdout.send_all(json.dumps(snapshot).encode() + b"\n")

    async def reporter() -> None:
        try:
            while True:
                await report()
                await trio.sleep(STATUS_PERIOD)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            mirror.stopping.set()  # the relay is gone

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received_signals:
            async for _ in received_signals:
                mirror.stopping.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reporter)
        nursery.start_soon(signals)
        await mirror.run()
        mirror.ledger.abandon()
        queue.abandon()
        with trio.move_on_after(1.0):
            try:
                await report()  # the last counters, if the relay still listens
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        nursery.cancel_scope.cancel()


def main() -> None:
    """Run by the relay's sidecar (`MirrorProcess`), which lowers the priority first."""
    level = sys.argv[1] if len(sys.argv) > 1 else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s mqtt-mirror: %(message)s")
    try:
        trio.run(_child_main)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
