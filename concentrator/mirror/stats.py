"""Plain counters of the mirror, read by the exporter (pickled with the relay's stats)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MirrorStats:
    queued: int = 0  # ASDUs handed over by the relay
    dropped: int = 0  # ASDUs dropped because the queue was full (oldest cyclic measurements first)
    dropped_in_flight: int = 0  # messages handed to a broker connection that broke before it confirmed them
    published_qos0: int = 0  # messages written to the broker at QoS 0
    published_qos2: int = 0  # messages the broker confirmed (PUBCOMP) at QoS 2
    decode_errors: int = 0  # ASDUs the decoder refused (published raw, see publisher)
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    queue_length: int = 0
    last_error: str = ""

    @property
    def published(self) -> int:
        return self.published_qos0 + self.published_qos2
