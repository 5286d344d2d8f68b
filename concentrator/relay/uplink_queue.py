"""ASDUs on their way to the BMI, and the bookkeeping that makes acknowledgement end to end.

No I/O and no clock: the relay tells this queue what arrived, what it sent and what the
BMI confirmed, and learns which site connection may now confirm how many frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..iec104.errors import ConcentratorError


class QueueError(ConcentratorError):
    """The BMI's confirmations and the queue disagree (a bug: the core keeps them equal)."""


class Closable(Protocol):
    @property
    def closed(self) -> bool: ...


Origin = TypeVar("Origin", bound=Closable)


@dataclass(slots=True)
class Item(Generic[Origin]):
    origin: Origin | None  # the site connection, or the BMI connection the relay's own answer is for
    asdu: bytes
    sent_at: float = field(default=0.0)
    # Frames of the same origin that were not forwarded (foreign CA) and are confirmed
    # to it together with this one, to keep its confirmations in order.
    extra: int = field(default=0)


class UplinkQueue(Generic[Origin]):
    """Sites take turns: each site with something to send has its own FIFO, and the sites
    are served round robin, at most `turn` frames each per turn, so that one site's burst
    (an interrogation answer) cannot hold back another site's frames, a command
    confirmation for instance, by more than `turn` frames. Per-site order is kept (each
    site's frames leave in arrival order) and the BMI confirms frames in the order they
    were sent, which the in-flight FIFO records.

    The relay sets `turn` to the uplink's w: the BMI confirms w frames at a time, and a
    confirmation that covers consecutive frames of one site is released to it as one
    S-frame, to which the site answers with one write. With one frame per turn, every
    BMI confirmation released one frame to each of w sites: w writes to the sites and w
    reads from them per w ASDUs, most of the relay's CPU in a storm (bench/PERF.md)."""

    def __init__(self, turn: int = 1) -> None:
        if turn < 1:
            raise ValueError(f"turn of {turn} frames, expected at least 1")
        self._turn = turn
        self._pending: dict[Origin | None, deque[Item[Origin]]] = {}
        self._turns: deque[Origin | None] = deque()  # origins with pending frames, next first
        self._taken = 0  # frames the first origin in _turns has sent in its current turn
        self._count = 0
        self._in_flight: deque[Item[Origin]] = deque()

    def __len__(self) -> int:
        return self._count

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def push(self, origin: Origin | None, asdu: bytes) -> Item[Origin]:
        queue = self._pending.get(origin)
        if queue is None:
            queue = self._pending[origin] = deque()
            self._turns.append(origin)
        item = Item(origin, asdu)
        queue.append(item)
        self._count += 1
        return item

    def take(self, now: float) -> Item[Origin] | None:
        """The next ASDU to send on the active uplink connection, now counted in flight."""
        turns = self._turns
        if not turns:
            return None
        origin = turns[0]
        queue = self._pending[origin]
        item = queue.popleft()
        self._taken += 1
        if not queue:
            turns.popleft()
            del self._pending[origin]
            self._taken = 0
        elif self._taken >= self._turn:
            turns.rotate(-1)  # its turn is over: to the back
            self._taken = 0
        self._count -= 1
        item.sent_at = now
        self._in_flight.append(item)
        return item

    def confirmed(self, count: int) -> list[Item[Origin]]:
        """The BMI confirmed the `count` oldest frames in flight."""
        if count > len(self._in_flight):
            raise QueueError(f"{count} confirmed, only {len(self._in_flight)} in flight")
        return [self._in_flight.popleft() for _ in range(count)]

    def requeue_in_flight(self, drop: Origin | None = None) -> int:
        """The active role moved to another BMI connection: what the old one did not
        confirm goes out again, ahead of each site's newer frames, and those sites first;
        except the frames of origin `drop` (the relay's answers to the old connection),
        which are dropped. Returns how many were dropped."""
        if drop is not None:
            kept = deque(item for item in self._in_flight if item.origin is not drop)
            dropped = len(self._in_flight) - len(kept)
            self._in_flight = kept
        else:
            dropped = 0
        first: list[Origin | None] = []
        for item in reversed(self._in_flight):
            queue = self._pending.get(item.origin)
            if queue is None:
                queue = self._pending[item.origin] = deque()
            queue.appendleft(item)
        for item in self._in_flight:
            if item.origin not in first:
                first.append(item.origin)
        self._turns = deque(first + [origin for origin in self._turns if origin not in first])
        self._taken = 0
        self._count += len(self._in_flight)
        self._in_flight.clear()
        return dropped

    def discard_pending(self, origin: Origin) -> int:
        """A site connection ended: its UPDC will send again what nobody confirmed, so
        its frames not yet sent are dropped. Frames already in flight stay, so that the
        BMI's confirmations keep counting the right frames; releasing them is skipped."""
        queue = self._pending.pop(origin, None)
        if queue is None:
            return 0
        if self._turns[0] is origin:
            self._taken = 0
        self._turns.remove(origin)
        self._count -= len(queue)
        return len(queue)

    def clear(self) -> None:
        self._pending.clear()
        self._turns.clear()
        self._taken = 0
        self._count = 0
        self._in_flight.clear()
