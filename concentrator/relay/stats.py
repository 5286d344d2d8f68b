"""Plain counters, gauges and histograms the relay keeps as it works.

The relay only ever adds to these, through the `record_*` methods; readers (the demo's
table, the Prometheus exporter) read them. Plain numbers keep the hot path cheap and let
a scrape read them from another thread without touching the event loop.

Readers on another thread hold no lock: single attribute reads and copies of a dict or a
list (`dict(d)`, `list(l)`, done in C under the GIL) are consistent on their own. The one
place where several fields must agree, the time in each state, is read through
`SiteStats.state_snapshot()`, which retries while `set_state()` is half way through
(a sequence counter, as a seqlock: the writer never waits).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from concentrator.configbase import Histogram
from concentrator.iec104.quality import MEASURED_VALUE_TYPES, MalformedMeasurement, count_invalid

# Relay latency buckets, seconds: 10 µs to 1 s.
LATENCY_BUCKETS = (
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
)  # fmt: skip

# BMI acknowledgement delay, seconds: the BMI's t2 (10 s by default) bounds it, and it
# must stay below the UPDC's t1 (15 s by default).
ACK_DELAY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 30.0,
)  # fmt: skip

SITE_STATES = ("disconnected", "connecting", "connected", "started")

# Distinct (type id, cause) pairs counted per site and direction. The peer chooses them (a
# fuzzing or hostile one all 16,384: 60 MB more of the relay's memory and as many series in
# every scrape, seen in bench/FUZZ.md); past this many, new pairs count under OTHER_KIND,
# exported as type_id="other", cause="other".
KIND_LIMIT = 128
OTHER_KIND = (-1, -1)


@dataclass
class Buffers:
    """One connection's buffers against their budgets (bytes; README "A hostile or broken
    peer"). The driver writes them when they change, never per frame on the fast path."""

    send_budget: int = 0  # bytes the peer may leave unread in the relay before it is closed
    send_buffered: int = 0  # bytes written to it that its socket did not take yet
    receive_budget: int = 0  # bytes read from it at once (one read) at most
    receive_buffered: int = 0  # bytes read from it and not yet handled (part of a frame)


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
    bytes_up_by_kind: Counter[tuple[int, int]] = field(default_factory=Counter)
    bytes_down_by_kind: Counter[tuple[int, int]] = field(default_factory=Counter)
    dropped_down: int = 0  # BMI ASDUs for this site while it was not connected
    # Time inside the relay: from the wake-up that read a site's frame to the write that
    # handed its copy to the BMI's socket (or to the connection's send buffer when the
    # socket was full), and the other way.
    latency_up: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    latency_down: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    last_latency_up: float | None = None
    last_ack_delay: float | None = None  # seconds from forwarding to the BMI's confirmation
    max_ack_delay: float = 0.0
    ack_delay: Histogram = field(default_factory=lambda: Histogram(ACK_DELAY_BUCKETS))
    last_test_round_trip: float | None = None
    last_close_reason: str = ""
    disconnects: Counter[str] = field(default_factory=Counter)  # by cause (iec104.errors.Cause values)
    foreign_ca: int = 0  # ASDUs whose CA is not one of the site's: not forwarded
    # Measured values (types 9-14, 34-36) from the site: objects, objects whose QDS has
    # IV set (annex A40 5.3 counts them as zero), ASDUs whose length does not fit their
    # type, and when the last measured-value ASDU arrived (relay clock).
    measured_values: int = 0
    invalid_measured_values: int = 0
    malformed_measurements: int = 0
    last_measurement_at: float | None = None
    buffers: Buffers = field(default_factory=Buffers)  # of the current connection
    state_version: int = 0  # odd while set_state() is changing the state fields

    def set_state(self, state: str, now: float) -> None:
        self.state_version += 1
        self.state_seconds[self.state] += now - self.state_since
        self.state, self.state_since = state, now
        self.state_version += 1

    def state_snapshot(self) -> tuple[str, float, dict[str, float]]:
        """(state, since, seconds in each state before it), consistent with each other,
        for readers on another thread while the relay may call set_state()."""
        while True:
            version = self.state_version
            if not version & 1:
                snapshot = (self.state, self.state_since, dict(self.state_seconds))
                if self.state_version == version:
                    return snapshot
            time.sleep(0)  # let the relay's thread finish set_state()

    def seconds_in_states(self, now: float) -> dict[str, float]:
        """Total time in each state so far, the current one included."""
        totals = dict(self.state_seconds)
        totals[self.state] += now - self.state_since
        return totals

    def record_up(self, asdu: bytes, now: float | None = None) -> None:
        size = len(asdu)
        kind = asdu[0], asdu[2] & 0x3F
        counts = self.asdus_up_by_kind
        if kind not in counts and len(counts) >= KIND_LIMIT:
            kind = OTHER_KIND
        self.asdus_up += 1
        self.bytes_up += size
        counts[kind] += 1
        self.bytes_up_by_kind[kind] += size
        if asdu[0] in MEASURED_VALUE_TYPES:
            self._record_measurement(asdu, now)

    def _record_measurement(self, asdu: bytes, now: float | None) -> None:
        try:
            objects, invalid = count_invalid(asdu)
        except MalformedMeasurement:
            # Forwarded all the same (the relay never judges content); counted so the
            # holder sees a device sending something odd.
            self.malformed_measurements += 1
            return
        self.measured_values += objects
        self.invalid_measured_values += invalid
        if now is not None:
            self.last_measurement_at = now

    def record_forwarded(self, latency: float) -> None:
        self.last_latency_up = latency
        self.latency_up.observe(latency)

    def record_down(self, asdu: bytes) -> None:
        size = len(asdu)
        kind = asdu[0], asdu[2] & 0x3F
        counts = self.asdus_down_by_kind
        if kind not in counts and len(counts) >= KIND_LIMIT:
            kind = OTHER_KIND
        self.asdus_down += 1
        self.bytes_down += size
        counts[kind] += 1
        self.bytes_down_by_kind[kind] += size

    def record_latency_down(self, latency: float) -> None:
        self.latency_down.observe(latency)

    def record_confirmed(self, delay: float) -> None:
        self.last_ack_delay = delay
        self.ack_delay.observe(delay)
        if delay > self.max_ack_delay:
            self.max_ack_delay = delay


@dataclass
class UplinkStats:
    connections: int = 0
    open_connections: int = 0
    refused: int = 0  # peers not on the allowlist, or above uplink.max_connections
    refused_by_reason: Counter[str] = field(default_factory=Counter)  # "not_allowed", "limit"
    active_peer: str = ""
    activations: int = 0
    asdus_up: int = 0
    asdus_down: int = 0
    negative_answers: int = 0  # unknown common address, cause 46
    requeued: int = 0  # frames re-sent after the active role moved
    answers_dropped: int = 0  # the relay's answers to a superseded connection's commands, not carried over
    last_test_round_trip: float | None = None
    last_close_reason: str = ""
    disconnects: Counter[str] = field(default_factory=Counter)  # by cause (iec104.errors.Cause values)
    buffers: dict[int, Buffers] = field(default_factory=dict)  # of each open BMI connection


@dataclass
class RelayStats:
    uplink: UplinkStats = field(default_factory=UplinkStats)
    sites: dict[str, SiteStats] = field(default_factory=dict)
    # The MQTT mirror's counters (concentrator/mirror/stats.py `MirrorStats`), when the
    # wiring layer configured one: the relay only carries them to the exporter and knows
    # nothing of the mirror, so they are untyped here; their readers name the type.
    mirror: Any = None
