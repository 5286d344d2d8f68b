"""The bounded queue between the relay and the mirror's publisher.

`push` runs on the relay's hot path for every site ASDU: constant time, no decoding,
never blocks. When full it drops, oldest first, from the cyclic measurements (QoS 0
traffic that the next sample replaces anyway); only when none are left does it drop the
oldest event. Events, states and critical points live in the other lane.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import trio

from concentrator.iec104.decode import CYCLIC_TYPES

from .stats import MirrorStats


class Entry(NamedTuple):
    seq: int
    asdu: bytes
    site: str
    received_at: float  # relay clock (trio.current_time())


class MirrorQueue:
    def __init__(self, limit: int, stats: MirrorStats, critical_sites: frozenset[str] = frozenset()) -> None:
        if limit < 1:
            raise ValueError("the mirror queue needs room for at least one ASDU")
        self.limit = limit
        self.stats = stats
        self._critical_sites = critical_sites
        self._cyclic: deque[Entry] = deque()
        self._priority: deque[Entry] = deque()
        self._seq = 0
        self._waiter: trio.Event | None = None

    def __len__(self) -> int:
        return len(self._cyclic) + len(self._priority)

    def push(self, asdu: bytes, site: str, received_at: float) -> None:
        """Called by the relay (in its trio thread) for every forwarded site ASDU."""
        self._seq += 1
        entry = Entry(self._seq, asdu, site, received_at)
        # A site with points configured as critical keeps its measurements in the
        # priority lane: their IOA is not read here.
        if asdu[0] in CYCLIC_TYPES and site not in self._critical_sites:
            self._cyclic.append(entry)
        else:
            self._priority.append(entry)
        self.stats.queued += 1
        if len(self._cyclic) + len(self._priority) > self.limit:
            self._drop_oldest("queue_full")
        self.stats.queue_length = len(self._cyclic) + len(self._priority)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def up(self, site: str, asdu: bytes, now: float) -> None:
        """The relay's tap (relay_core.Tap): every site ASDU the uplink queue took."""
        self.push(asdu, site, now)

    def down(self, asdu: bytes, now: float) -> None:
        """The relay's tap: the mirror publishes the sites' data only."""

    def _drop_oldest(self, reason: str) -> None:
        # Counted as lost messages by lane: QoS 0 for the cyclic lane, 2 for the other
        # (which also holds the measurements of sites with critical points).
        lane, qos = (self._cyclic, "0") if self._cyclic else (self._priority, "2")
        victim = lane.popleft()
        stats = self.stats
        if reason == "queue_full":
            stats.dropped += 1
        # One message per information object (VSQ's count; 1 for an ASDU mirrored raw).
        key = f"{reason}/{qos}"
        stats.lost[key] = stats.lost.get(key, 0) + ((victim.asdu[1] & 0x7F) or 1)
        stats.queue_length = len(self._cyclic) + len(self._priority)

    def abandon(self) -> None:
        """The mirror stops: what is still queued is lost (counted)."""
        while self:
            self._drop_oldest("shutdown")

    def oldest(self) -> float | None:
        """Received time of the oldest entry, or None when empty."""
        heads = [lane[0].received_at for lane in (self._cyclic, self._priority) if lane]
        return min(heads) if heads else None

    def pop(self) -> Entry | None:
        """The oldest entry of both lanes (arrival order is kept across them), or None."""
        cyclic, priority = self._cyclic, self._priority
        if cyclic and (not priority or cyclic[0].seq < priority[0].seq):
            entry = cyclic.popleft()
        elif priority:
            entry = priority.popleft()
        else:
            return None
        self.stats.queue_length = len(cyclic) + len(priority)
        return entry

    async def wait(self) -> None:
        """Until something is queued (returns at once if it already is)."""
        if self:
            return
        if self._waiter is None:
            self._waiter = trio.Event()
        await self._waiter.wait()
