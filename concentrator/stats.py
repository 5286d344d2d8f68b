"""Plain counters, gauges and histograms the relay keeps as it works.

The relay only ever adds to these, through the `record_*` methods; readers (the demo's
table, the Prometheus exporter) read them. Plain numbers keep the hot path cheap and let
a scrape read them from another thread without touching the event loop.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Relay latency buckets, seconds: 10 µs to 1 s.
LATENCY_BUCKETS = (
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
)  # fmt: skip

SITE_STATES = ("disconnected", "connecting", "connected", "started")


@dataclass
class Histogram:
    """Cumulative-on-read histogram: observe() is one bisect and two additions."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class SiteStats:
    name: str
    common_addresses: tuple[int, ...]
    state: str = "disconnected"
    state_since: float = 0.0
    state_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SITE_STATES, 0.0))
    endpoint: str = ""
    connects: int = 0
    asdus_up: int = 0
    asdus_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    asdus_up_by_kind: Counter[tuple[int, int]] = field(default_factory=Counter)  # (type id, cause)
    asdus_down_by_kind: Counter[tuple[int, int]] = field(default_factory=Counter)
    dropped_down: int = 0  # BMI ASDUs for this site while it was not connected
    latency_up: Histogram = field(default_factory=Histogram)  # site frame read -> copy queued to the BMI
    latency_down: Histogram = field(default_factory=Histogram)
    last_latency_up: float | None = None
    last_ack_delay: float | None = None  # seconds from forwarding to the BMI's confirmation
    max_ack_delay: float = 0.0
    last_test_round_trip: float | None = None
    last_close_reason: str = ""

    def set_state(self, state: str, now: float) -> None:
        self.state_seconds[self.state] += now - self.state_since
        self.state, self.state_since = state, now

    def seconds_in_states(self, now: float) -> dict[str, float]:
        """Total time in each state so far, the current one included."""
        totals = dict(self.state_seconds)
        totals[self.state] += now - self.state_since
        return totals

    def record_up(self, asdu: bytes) -> None:
        self.asdus_up += 1
        self.bytes_up += len(asdu)
        self.asdus_up_by_kind[asdu[0], asdu[2] & 0x3F] += 1

    def record_forwarded(self, latency: float) -> None:
        self.last_latency_up = latency
        self.latency_up.observe(latency)

    def record_down(self, asdu: bytes, latency: float) -> None:
        self.asdus_down += 1
        self.bytes_down += len(asdu)
        self.asdus_down_by_kind[asdu[0], asdu[2] & 0x3F] += 1
        self.latency_down.observe(latency)

    def record_confirmed(self, delay: float) -> None:
        self.last_ack_delay = delay
        if delay > self.max_ack_delay:
            self.max_ack_delay = delay


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
    last_test_round_trip: float | None = None
    last_close_reason: str = ""


@dataclass
class RelayStats:
    uplink: UplinkStats = field(default_factory=UplinkStats)
    sites: dict[str, SiteStats] = field(default_factory=dict)
