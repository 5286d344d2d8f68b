"""Plain counters and gauges the relay keeps as it works.

The relay only ever adds to these; readers (the demo's table, the Prometheus exporter)
read them. Keeping them plain numbers keeps the hot path cheap and lets a scrape read
them without touching the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SiteStats:
    name: str
    common_addresses: tuple[int, ...]
    state: str = "disconnected"  # disconnected, connecting, connected, started
    endpoint: str = ""
    connects: int = 0
    asdus_up: int = 0
    asdus_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_down: int = 0  # BMI ASDUs for this site while it was not connected
    last_latency_up: float | None = None  # seconds from site receive to uplink send
    last_latency_down: float | None = None
    last_ack_delay: float | None = None  # seconds from forwarding to the BMI's confirmation
    max_ack_delay: float = 0.0
    last_test_round_trip: float | None = None
    last_close_reason: str = ""


@dataclass
class UplinkStats:
    connections: int = 0
    open_connections: int = 0
    refused: int = 0  # peers not on the allowlist
    active_peer: str = ""
    activations: int = 0
    asdus_up: int = 0
    asdus_down: int = 0
    negative_answers: int = 0  # unknown common address, cause 46
    requeued: int = 0  # frames re-sent after the active role moved
    last_close_reason: str = ""


@dataclass
class RelayStats:
    uplink: UplinkStats = field(default_factory=UplinkStats)
    sites: dict[str, SiteStats] = field(default_factory=dict)
