"""Where every message handed to the broker connection stands: the mirror's accounting.

No I/O: the publisher tells it what happened (handed over, PINGREQ queued, PINGRESP
read, PUBCOMP or a refusal read, connection lost) and it keeps `MirrorStats` honest.

- QoS 2: published at PUBCOMP; refused when PUBREC (or PUBCOMP) carries a failure reason
  code (MQTT 5), counted by reason; kept across a reconnection (the session is
  persistent: paho sends PUBLISH or PUBREL again and the broker completes it).
- QoS 0: the protocol confirms nothing. A message counts as sent, unconfirmable (never
  as published) once the broker answered a PINGREQ queued after it: the broker reads a
  connection in order, so it has processed the message by then, but whether it
  accepted it (an ACL denies QoS 0 silently) no packet says. What the connection had not confirmed when it
  broke counts as lost at disconnect. That is exact when the broker stops or the
  connection breaks between packets it reads; a broker that read a message but not the
  PINGREQ behind it, or a connection we gave up on while the broker was frozen with our
  data in its socket buffer (it reads it when it wakes), makes it an upper bound.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .stats import MirrorStats


@dataclass(frozen=True, slots=True)
class Pending:
    topic: str
    received: float  # wall-clock time the relay read the ASDU


class Ledger:
    def __init__(self, stats: MirrorStats) -> None:
        self.stats = stats
        self._qos0: deque[float] = deque()  # received times, handed over on this connection, not yet confirmed
        self._qos0_handed = 0  # QoS 0 messages handed over since start (a running count)
        self._qos0_settled = 0  # of those, confirmed or counted lost
        self._fences: deque[int] = deque()  # per PINGREQ in flight: _qos0_handed when it was queued
        self.qos2: dict[int, Pending] = {}  # paho message id -> message, until PUBCOMP or refusal

    @property
    def in_flight(self) -> int:
        return len(self._qos0) + len(self.qos2)

    def oldest(self) -> float | None:
        """Received time of the oldest message handed over and not yet confirmed."""
        times = [p.received for p in self.qos2.values()]  # at most MAX_IN_FLIGHT
        if self._qos0:
            times.append(self._qos0[0])
        return min(times) if times else None

    def handed_qos0(self, received: float) -> None:
        self._qos0.append(received)
        self._qos0_handed += 1

    def handed_qos2(self, mid: int, pending: Pending) -> None:
        self.qos2[mid] = pending

    def wants_fence(self) -> bool:
        """True when QoS 0 messages were handed over after the last PINGREQ. One follows
        every batch, so that a broker that reads a message also reads the PINGREQ behind
        it (a broker that stops between the two would make the count an upper bound)."""
        last = self._fences[-1] if self._fences else self._qos0_settled
        return self._qos0_handed > last

    def pingreq_queued(self) -> None:
        self._fences.append(self._qos0_handed)

    def pingresp_read(self) -> None:
        if not self._fences:
            return
        fence = self._fences.popleft()
        confirmed = fence - self._qos0_settled
        for _ in range(confirmed):
            self._qos0.popleft()
        self._qos0_settled = fence
        self.stats.sent_unconfirmable += confirmed

    def completed(self, mid: int) -> Pending | None:
        """PUBCOMP with success. None for a message id that is not ours to count."""
        pending = self.qos2.pop(mid, None)
        if pending is not None:
            self.stats.published_qos2 += 1
        return pending

    def refused(self, mid: int, reason: str) -> Pending | None:
        pending = self.qos2.pop(mid, None)
        if pending is not None:
            self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        return pending

    def lost_by_broker(self, mid: int) -> None:
        if self.qos2.pop(mid, None) is not None:
            self._add_lost("broker_session", "2", 1)

    def connection_lost(self) -> None:
        """QoS 0 messages not confirmed are lost; QoS 2 ones stay for the next connection."""
        self._add_lost("disconnect", "0", len(self._qos0))
        self._qos0.clear()
        self._qos0_settled = self._qos0_handed
        self._fences.clear()

    def lost_qos0(self, count: int = 1) -> None:
        """Handed over while the connection was already gone (paho refused it)."""
        self._add_lost("disconnect", "0", count)

    def abandon(self) -> None:
        """The mirror stops: whatever is still in flight will never be completed."""
        self.connection_lost()
        self._add_lost("shutdown", "2", len(self.qos2))
        self.qos2.clear()

    def _add_lost(self, reason: str, qos: str, count: int) -> None:
        if count:
            key = f"{reason}/{qos}"
            self.stats.lost[key] = self.stats.lost.get(key, 0) + count
