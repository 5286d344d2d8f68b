"""ASDUs on their way to the BMI, and the bookkeeping that makes acknowledgement end to end.

No I/O and no clock: the relay tells this queue what arrived, what it sent and what the
BMI confirmed, and learns which site connection may now confirm how many frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    @property
    def closed(self) -> bool: ...


Origin = TypeVar("Origin", bound=Closable)


@dataclass(slots=True)
class Item(Generic[Origin]):
    origin: Origin | None  # the site connection; None for the relay's own negative answers
    asdu: bytes
    received_at: float
    sent_at: float = field(default=0.0)


class UplinkQueue(Generic[Origin]):
    """Per-site order is kept because every site's frames enter one FIFO in arrival order
    and leave it in that order; the BMI confirms them oldest first."""

    def __init__(self) -> None:
        self._pending: deque[Item[Origin]] = deque()
        self._in_flight: deque[Item[Origin]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def push(self, origin: Origin | None, asdu: bytes, now: float) -> None:
        self._pending.append(Item(origin, asdu, now))

    def take(self, now: float) -> Item[Origin] | None:
        """The next ASDU to send on the active uplink connection, now counted in flight."""
        if not self._pending:
            return None
        item = self._pending.popleft()
        item.sent_at = now
        self._in_flight.append(item)
        return item

    def confirmed(self, count: int) -> list[Item[Origin]]:
        """The BMI confirmed the `count` oldest frames in flight."""
        if count > len(self._in_flight):
            raise ValueError(f"{count} confirmed, only {len(self._in_flight)} in flight")
        return [self._in_flight.popleft() for _ in range(count)]

    def requeue_in_flight(self) -> None:
        """The active role moved to another BMI connection: what the old one did not
        confirm goes out again first, in its original order."""
        self._pending.extendleft(reversed(self._in_flight))
        self._in_flight.clear()

    def discard_pending(self, origin: Origin) -> int:
        """A site connection ended: its UPDC will send again what nobody confirmed, so
        its frames not yet sent are dropped. Frames already in flight stay, so that the
        BMI's confirmations keep counting the right frames; releasing them is skipped."""
        kept = [item for item in self._pending if item.origin is not origin]
        dropped = len(self._pending) - len(kept)
        self._pending = deque(kept)
        return dropped

    def clear(self) -> None:
        self._pending.clear()
        self._in_flight.clear()


def releases(items: Iterable[Item[Origin]]) -> dict[Origin, int]:
    """How many frames each still-open site connection may now confirm."""
    counts: dict[Origin, int] = {}
    for item in items:
        if item.origin is not None and not item.origin.closed:
            counts[item.origin] = counts.get(item.origin, 0) + 1
    return counts
