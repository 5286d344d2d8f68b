"""Plain counters of the mirror, read by the exporter (pickled with the relay's stats).

The relay side (its queue) and the child side (its queue, the broker connection) are
both here: the parent copies the child's fields from the child's status lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MirrorStats:
    # relay side
    queued: int = 0  # ASDUs handed over by the relay
    dropped: int = 0  # ASDUs dropped because a queue was full (relay's and child's; oldest cyclic first)
    queue_length: int = 0  # ASDUs in the relay's queue
    # child side
    child_queue_length: int = 0  # ASDUs in the child's queue
    in_flight: int = 0  # messages handed to the broker connection, not yet confirmed
    # QoS 0 messages the broker has read (a later PINGRESP): sent, unconfirmable. MQTT does
    # not say whether it accepted them (an ACL denial drops them silently), so they are
    # never counted as published.
    sent_unconfirmable: int = 0
    published_qos2: int = 0  # QoS 2 messages the broker completed (PUBCOMP): delivered
    refused: dict[str, int] = field(default_factory=dict)  # broker's reason code -> messages refused
    quota_retries: int = 0  # PUBRECs saying quota exceeded (0x97): the message was sent again later
    # "reason/qos" -> messages lost: queue_full (dropped unsent), disconnect (QoS 0 not
    # confirmed when the connection broke), shutdown (in flight when the mirror stopped)
    lost: dict[str, int] = field(default_factory=dict)
    # wall-clock receive time of the oldest ASDU not yet published (relay queue, pipe,
    # child queue, in flight), None when everything is published: the viewer's staleness
    oldest_unpublished: float | None = None
    decode_errors: int = 0  # ASDUs the decoder refused (published raw, see payload)
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    last_error: str = ""

    @property
    def broker_read(self) -> int:
        """Messages the broker has read: published (QoS 2) or sent, unconfirmable (QoS 0)."""
        return self.sent_unconfirmable + self.published_qos2

    def lost_messages(self, qos: str) -> int:
        return sum(n for key, n in self.lost.items() if key.endswith(f"/{qos}"))
