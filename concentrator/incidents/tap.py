"""The relay's side of the incident register: a tap and the feeder of its process.

`IncidentTap` observes the relay core twice: as a `Tap` (`up(site, asdu, now)` for every
site ASDU forwarded; BMI ASDUs are not needed) and as a `LinkTap` (`link(site, state,
detail, now)`: sites connected, started, disconnected with the cause; the BMI started or
stopped). Each call is an append to a bounded deque: ASDUs beyond the limit drop the
oldest (counted); link events have their own deque, small and never crowded out by data.
`IncidentFeeder` drains both every FEED_PERIOD in a task of the relay's nursery and
writes them to the incident process (process.py), restarting it if it dies: the
register is SQLite, so nothing committed is lost.

Frames to the child: a pickle of the `IncidentsConfig` (our pipe), then per entry a
4-octet big-endian length of what follows, an 8-octet float wall time, one octet of
kind (ASDU, LINK, DROPPED), one octet of site name length (0: the BMI), the name, the
payload (the ASDU; for LINK "state\\0detail"; for DROPPED the count, 8 octets).
"""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import time
from collections import deque

import trio

from .config import IncidentsConfig

log = logging.getLogger(__name__)

FEED_PERIOD = 0.05  # s: times are taken at the tap, so this delay costs nothing
RESTART_DELAY = 1.0
RESTART_MAX = 60.0
LINK_EVENTS_LIMIT = 10_000
HEAD = struct.Struct(">IdBB")
ASDU, LINK, DROPPED = 0, 1, 2
CHILD = "import os; os.nice(10); from concentrator.incidents.process import main; main()"


class IncidentTap:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.asdus: deque[tuple[str, bytes, float]] = deque()
        self.links: deque[tuple[str, str, str, float]] = deque(maxlen=LINK_EVENTS_LIMIT)
        self.dropped = 0
        # The latest state of each link: a restarted incident process starts from it.
        self.current: dict[str, tuple[str, str, float]] = {}

    def up(self, site: str, asdu: bytes, now: float) -> None:
        asdus = self.asdus
        asdus.append((site, asdu, now))
        if len(asdus) > self.limit:
            asdus.popleft()
            self.dropped += 1

    def down(self, asdu: bytes, now: float) -> None:
        pass  # the BMI's ASDUs say nothing of the UPDCs' availability

    def link(self, site: str | None, state: str, detail: str, now: float) -> None:
        self.links.append((site or "", state, detail, now))
        self.current[site or ""] = (state, detail, now)


def encode(kind: int, site: str, payload: bytes, wall: float) -> bytes:
    name = site.encode()
    return HEAD.pack(10 + len(name) + len(payload), wall, kind, len(name)) + name + payload


def config_frame(config: IncidentsConfig) -> bytes:
    payload = pickle.dumps(config)
    return struct.pack(">I", len(payload)) + payload


class IncidentFeeder:
    def __init__(self, config: IncidentsConfig, tap: IncidentTap) -> None:
        self.config = config
        self.tap = tap
        self.restarts = 0

    async def run(self) -> None:
        delay = RESTART_DELAY
        while True:
            started = trio.current_time()
            try:
                await self._child()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("incident process: %s; restarting", exc)
            self.restarts += 1
            if trio.current_time() - started > RESTART_MAX:
                delay = RESTART_DELAY
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _child(self) -> None:
        process = await trio.lowlevel.open_process([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            await process.stdin.send_all(config_frame(self.config))
            tap = self.tap
            reported = tap.dropped
            # The links as they are now (the events before are the previous child's).
            tap.links.clear()
            offset = time.time() - trio.current_time()
            snapshot = [encode(LINK, site, f"{state}\0{detail}".encode(), now + offset)
                        for site, (state, detail, now) in tap.current.items()]  # fmt: skip
            await process.stdin.send_all(b"".join(snapshot))
            while True:
                await trio.sleep(FEED_PERIOD)
                if process.poll() is not None:
                    raise trio.BrokenResourceError(f"exited with status {process.returncode}")
                offset = time.time() - trio.current_time()  # the relay's clock is monotonic
                chunks = []
                # Link events first: an ASDU is never judged before the start it follows.
                links, asdus = tap.links, tap.asdus
                while links or asdus:
                    if links and (not asdus or links[0][3] <= asdus[0][2]):
                        site, state, detail, now = links.popleft()
                        chunks.append(encode(LINK, site, f"{state}\0{detail}".encode(), now + offset))
                    else:
                        site, asdu, now = asdus.popleft()
                        chunks.append(encode(ASDU, site, asdu, now + offset))
                if tap.dropped > reported:
                    chunks.append(encode(DROPPED, "", (tap.dropped - reported).to_bytes(8, "big"), time.time()))
                    reported = tap.dropped
                if chunks:
                    await process.stdin.send_all(b"".join(chunks))
        finally:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
