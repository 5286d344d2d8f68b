"""The relay's side of the incident register: a tap and the feeder of its process.

`IncidentTap` observes the relay core twice: as a `Tap` (`up(site, asdu, now)` for every
site ASDU forwarded; BMI ASDUs are not needed) and as a `LinkTap` (`link(site, state,
detail, now)`: sites connected, started, disconnected with the cause; the BMI started or
stopped). Each call is an append to a bounded deque: ASDUs beyond the limit drop the
oldest (counted); link events have their own deque, small and never crowded out by data.
`IncidentFeeder` drains both every FEED_PERIOD in a task of the relay's nursery and
writes them to the incident process (process.py), restarting it if it dies: the
register is SQLite, so nothing committed is lost.

Frames to the child are the sidecar's (concentrator/sidecar.py): the `IncidentsConfig`,
then one record per entry with its wall time, kind (ASDU, LINK, DROPPED) and site name
(empty: the BMI); the body is the ASDU, for LINK "state\\0detail", for DROPPED the
count (8 octets).
"""

from __future__ import annotations

import time
from collections import deque

import trio

from ..sidecar import Backoff, Child, Sidecar, command, encode
from .config import IncidentsConfig

FEED_PERIOD = 0.05  # s: times are taken at the tap, so this delay costs nothing
LINK_EVENTS_LIMIT = 10_000
ASDU, LINK, DROPPED = 0, 1, 2
CHILD = "concentrator.incidents.process"  # the child's module (sidecar.command)


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


def link_record(site: str, state: str, detail: str, wall: float) -> bytes:
    return encode(site, f"{state}\0{detail}".encode(), wall, kind=LINK)


class IncidentFeeder:
    def __init__(self, config: IncidentsConfig, tap: IncidentTap) -> None:
        self.config = config
        self.tap = tap
        self.sidecar = Sidecar("incident", command(CHILD), lambda: config, policy=Backoff())

    async def run(self) -> None:
        """Run the incident process as the relay's sidecar, for as long as the relay runs."""
        await self.sidecar.run(self._session)

    async def _session(self, child: Child) -> None:
        tap = self.tap
        reported = tap.dropped
        # The links as they are now (the events before are the previous child's).
        tap.links.clear()
        offset = time.time() - trio.current_time()
        await child.send([link_record(site, state, detail, now + offset)
                          for site, (state, detail, now) in tap.current.items()])  # fmt: skip
        while True:
            await trio.sleep(FEED_PERIOD)
            offset = time.time() - trio.current_time()  # the relay's clock is monotonic
            chunks = []
            # Link events first: an ASDU is never judged before the start it follows.
            links, asdus = tap.links, tap.asdus
            while links or asdus:
                if links and (not asdus or links[0][3] <= asdus[0][2]):
                    site, state, detail, now = links.popleft()
                    chunks.append(link_record(site, state, detail, now + offset))
                else:
                    site, asdu, now = asdus.popleft()
                    chunks.append(encode(site, asdu, now + offset, kind=ASDU))
            if tap.dropped > reported:
                chunks.append(encode("", (tap.dropped - reported).to_bytes(8, "big"), time.time(), kind=DROPPED))
                reported = tap.dropped
            await child.send(chunks)
