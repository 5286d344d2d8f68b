"""Prometheus view of the relay's `RelayStats`, in the text exposition format.

The relay keeps plain numbers (concentrator/relay/stats.py) and never calls into
prometheus_client, so its event loop does no metrics work beyond additions; this runs
in the exporter process (monitoring/scrape_process.py) over a snapshot of them, or on
any thread over the live objects, and only reads.

A scrape of 100 sites has about 8,500 samples. Built as prometheus_client metric
families and formatted by generate_latest() that took about 60 ms of CPU; written as text
directly (render_sites) it takes a few ms, which matters on a 2-core appliance whose
relay shares the CPU with the exporter (bench/SCRAPE.md).

Conventions (as node_exporter): one prefix `concentrator_`, base units (`_seconds`,
`_bytes`, `_total`), `_info` metrics with value 1 for metadata, and time spent in each
state as counters, so that availability over any window is
`increase(concentrator_site_state_seconds_total{state="started"}[w]) / w`, exactly.
The full list, with meanings, is in monitoring/README.md.
"""

from __future__ import annotations

import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from concentrator.iec104.errors import CAUSES
from concentrator.mirror.stats import MirrorStats
from concentrator.relay.config import MetricsConfig, SiteConfig, UplinkConfig
from concentrator.relay.stats import SITE_STATES, RelayStats, SiteStats
from concentrator.relay.windows import budget

from .primitives import PREFIX, Histogram, histogram_buckets

# MQTT 5 PUBREC/PUBACK failure reasons, exported at 0 until seen (so increase() works).
MIRROR_REFUSAL_REASONS = ("Not authorized", "Quota exceeded", "Topic name invalid", "Payload format invalid",
                          "Packet identifier in use", "Implementation specific error", "Unspecified error")  # fmt: skip
MIRROR_LOSS_KEYS = ("queue_full/0", "queue_full/2", "disconnect/0", "shutdown/0", "shutdown/2",
                    "broker_session/2")  # fmt: skip


class RelayFile(Protocol):
    """What the relay's metrics read of the configuration: the file's identity and the
    relay's own sections (concentrator/relay/config.py). The whole file's `Config`
    (concentrator/config.py) is one; the wiring layer hands it over, so that monitoring
    imports no wiring module (tests/unit/test_imports.py)."""

    @property
    def file(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def mtime(self) -> float: ...

    @property
    def uplink(self) -> UplinkConfig: ...

    @property
    def sites(self) -> tuple[SiteConfig, ...]: ...

    @property
    def metrics(self) -> MetricsConfig: ...


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iec104-concentrator")
    except PackageNotFoundError:
        return "unknown"


class RelayMetrics:
    """Reads `stats` and `config` at each scrape: the relay's live objects (on another
    thread), or a snapshot of them (monitoring/scrape_process.py). Not a prometheus_client
    Collector: exposition() writes the sites' part as text (see render_sites).

    `now` returns the current time on the relay's clock (the clock the relay stamps
    `SiteStats.state_since` and `last_measurement_at` with); see exporter.relay_clock().
    """

    def __init__(
        self,
        stats: RelayStats,
        config: RelayFile,
        now: Callable[[], float],
        *,
        started_at: float | None = None,
        loaded_at: float | None = None,
    ) -> None:
        self.stats = stats
        self.config = config
        self.now = now
        # When the exporter started (relay clock) and the configuration was loaded (Unix
        # time): the relay loads its configuration once, at start.
        self.started_at = now() if started_at is None else started_at
        self.loaded_at = time.time() if loaded_at is None else loaded_at

    def exposition(self) -> bytes:
        """The whole scrape, in the Prometheus text format 0.0.4: metadata and the uplink
        (a few samples) as metric families, the sites' many samples as text directly."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry) + render_sites(self.stats, self.config, self.now(), self.started_at).encode()

    def families(self) -> Iterator[Metric]:
        yield from self._metadata()
        yield from self._uplink()
        yield from self._mirror()

    # ------------------------------------------------------------------ metadata
    def _metadata(self) -> Iterator[Metric]:
        build = InfoMetricFamily(f"{PREFIX}build", "Version of the concentrator and of Python it runs on.")
        build.add_metric([], {"version": package_version(), "python_version": platform.python_version()})
        yield build
        config = InfoMetricFamily(
            f"{PREFIX}config", "Configuration file the relay runs with and its SHA-256 (changes when the file does)."
        )
        config.add_metric([], {"file": self.config.file, "sha256": self.config.sha256})
        yield config
        yield GaugeMetricFamily(
            f"{PREFIX}config_load_timestamp_seconds",
            "When the relay loaded its configuration (Unix time).",
            value=self.loaded_at,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}config_modified_timestamp_seconds",
            "Modification time of the configuration file when it was loaded (Unix time).",
            value=self.config.mtime,
        )

    # ------------------------------------------------------------------ MQTT mirror
    def _mirror(self) -> Iterator[Metric]:
        mirror: MirrorStats | None = self.stats.mirror
        if mirror is None:  # no `mqtt:` section: no mirror metrics at all
            return
        yield GaugeMetricFamily(
            f"{PREFIX}mirror_broker_connected", "1 while the MQTT mirror is connected to its broker.",
            value=1 if mirror.connected else 0,
        )  # fmt: skip
        published = CounterMetricFamily(
            f"{PREFIX}mirror_published_messages", "MQTT messages the broker confirmed delivering (QoS 2 at PUBCOMP).",
            labels=["qos"],
        )  # fmt: skip
        published.add_metric(["2"], mirror.published_qos2)
        yield published
        yield CounterMetricFamily(
            f"{PREFIX}mirror_sent_unconfirmable_messages",
            "QoS 0 MQTT messages the broker read (it answered a later PINGREQ): sent, unconfirmable, since MQTT does "
            "not say whether it accepted them (an ACL denial drops them silently). Not delivered: never add to "
            "published.",
            value=mirror.sent_unconfirmable,
        )
        refused = CounterMetricFamily(
            f"{PREFIX}mirror_refused_messages", "Messages the broker refused (MQTT 5 reason code), e.g. the ACL.",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in {**dict.fromkeys(MIRROR_REFUSAL_REASONS, 0), **mirror.refused}.items():
            refused.add_metric([reason], count)
        yield refused
        lost = CounterMetricFamily(
            f"{PREFIX}mirror_lost_messages",
            "Messages that never reached the broker: queue_full (dropped unsent), disconnect (QoS 0 not confirmed "
            "when the connection broke: an upper bound), shutdown, broker_session (the broker lost its session).",
            labels=["reason", "qos"],
        )  # fmt: skip
        counts = {key: 0 for key in MIRROR_LOSS_KEYS} | mirror.lost
        for key, count in counts.items():
            reason, _, qos = key.partition("/")
            lost.add_metric([reason, qos], count)
        yield lost
        for name, doc, value in (
            ("mirror_queued_asdus", "Site ASDUs handed to the mirror by the relay.", mirror.queued),
            ("mirror_dropped_asdus", "ASDUs dropped from a full mirror queue (oldest cyclic measurements first).",
             mirror.dropped),
            ("mirror_decode_errors", "ASDUs the decoder refused (mirrored raw).", mirror.decode_errors),
            ("mirror_quota_retries", "Publishes the broker answered with quota exceeded (0x97), sent again later.",
             mirror.quota_retries),
            ("mirror_broker_connects", "Connections to the broker accepted.", mirror.connects),
            ("mirror_broker_connect_failures", "Attempts to connect to the broker that failed.",
             mirror.connect_failures),
        ):  # fmt: skip
            yield CounterMetricFamily(f"{PREFIX}{name}", doc, value=value)
        queue = GaugeMetricFamily(
            f"{PREFIX}mirror_queue_length", "ASDUs waiting: in the relay's queue, in the mirror process's queue.",
            labels=["side"],
        )  # fmt: skip
        queue.add_metric(["relay"], mirror.queue_length)
        queue.add_metric(["child"], mirror.child_queue_length)
        yield queue
        yield GaugeMetricFamily(
            f"{PREFIX}mirror_in_flight_messages", "Messages handed to the broker connection, not yet confirmed.",
            value=mirror.in_flight,
        )  # fmt: skip
        oldest = mirror.oldest_unpublished
        yield GaugeMetricFamily(
            f"{PREFIX}mirror_oldest_unpublished_age_seconds",
            "Age of the oldest site ASDU not yet published (0 when all are): how stale MQTT viewers are.",
            value=0.0 if oldest is None else max(0.0, time.time() - oldest),
        )  # fmt: skip
        if mirror.last_error:
            error = GaugeMetricFamily(
                f"{PREFIX}mirror_last_error_info", "The mirror's last error (connection, refusal), as a label.",
                labels=["error"],
            )  # fmt: skip
            error.add_metric([mirror.last_error[:200]], 1)
            yield error

    # ------------------------------------------------------------------ uplink
    def _uplink(self) -> Iterator[Metric]:
        uplink = self.stats.uplink
        active_peer = uplink.active_peer  # one read: the relay may change it meanwhile
        yield GaugeMetricFamily(
            f"{PREFIX}uplink_started",
            "1 while a BMI connection is started (data transfer active), else 0.",
            value=1 if active_peer else 0,
        )
        active = InfoMetricFamily(f"{PREFIX}uplink_active_connection", "The started BMI connection, if any.")
        if active_peer:
            active.add_metric([], {"peer": active_peer})
        yield active
        yield GaugeMetricFamily(
            f"{PREFIX}uplink_open_connections", "BMI connections open (started or not).", value=uplink.open_connections
        )
        yield GaugeMetricFamily(
            f"{PREFIX}uplink_t1_seconds",
            "t1 toward the BMI: time the relay waits for an acknowledgement.",
            value=self.config.uplink.params.t1,
        )
        for name, doc, value in (
            ("uplink_connections", "BMI connections accepted.", uplink.connections),
            ("uplink_activations", "STARTDTs that made a BMI connection the started one.", uplink.activations),
            ("uplink_negative_answers", "BMI ASDUs for an unknown common address, answered with cause 46.",
             uplink.negative_answers),
            ("uplink_requeued_asdus", "ASDUs sent again after the started role moved to another connection.",
             uplink.requeued),
            ("uplink_dropped_answers", "The relay's cause-46 answers to a superseded connection's commands, "
             "not carried over to the connection that took the started role.", uplink.answers_dropped),
        ):  # fmt: skip
            yield CounterMetricFamily(f"{PREFIX}{name}", doc, value=value)
        refused = CounterMetricFamily(
            f"{PREFIX}uplink_refused_connections",
            "Connections refused at accept, by reason: not_allowed (peer not in uplink.allowed_peers), "
            "limit (uplink.max_connections open already).",
            labels=["reason"],
        )
        by_reason = dict(uplink.refused_by_reason)  # one C-level copy: the relay may add keys
        for reason in ("not_allowed", "limit"):
            refused.add_metric([reason], by_reason.get(reason, 0))
        yield refused
        yield _by_cause(
            f"{PREFIX}uplink_disconnects", "BMI connections ended, by cause (iec104.errors.Cause).", uplink.disconnects
        )
        asdus = CounterMetricFamily(
            f"{PREFIX}uplink_asdus", "ASDUs on the started BMI connection, by direction.", labels=["direction"]
        )
        asdus.add_metric(["up"], uplink.asdus_up)
        asdus.add_metric(["down"], uplink.asdus_down)
        yield asdus
        buffers = list(dict(uplink.buffers).values())  # one C-level copy: connections come and go
        limit = budget(self.config.uplink.params.k)
        for direction in ("send", "receive"):
            yield GaugeMetricFamily(
                f"{PREFIX}uplink_{direction}_buffer_bytes",
                f"Largest {direction} buffer of the open BMI connections (README, budgets).",
                value=max((getattr(b, f"{direction}_buffered") for b in buffers), default=0),
            )
            yield GaugeMetricFamily(
                f"{PREFIX}uplink_{direction}_budget_bytes",
                f"{direction.capitalize()} budget of each BMI connection: beyond it the connection is closed "
                f"({direction}_budget_exceeded).",
                value=limit,
            )
        round_trip = GaugeMetricFamily(
            f"{PREFIX}uplink_test_round_trip_seconds", "Round trip of the last TESTFR to the BMI."
        )
        if uplink.last_test_round_trip is not None:
            round_trip.add_metric([], uplink.last_test_round_trip)
        yield round_trip


def _by_cause(name: str, doc: str, counts: Counter[str]) -> Metric:
    """A counter family with one sample per cause of disconnect (every cause, zeros
    included, so that increase() works from the first one)."""
    family = CounterMetricFamily(name, doc, labels=["cause"])
    ended = dict(counts)  # one C-level copy: the relay may add keys meanwhile
    for code in CAUSES:
        family.add_metric([code.value], ended.get(code.value, 0))
    return family


class _Families(Collector):
    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the stats

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


# ---------------------------------------------------------------------- sites, as text


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)  # "nan" is read as NaN too


def _kind(value: int) -> str:
    """A type id or cause as a label value; stats.OTHER_KIND's -1 is "other"."""
    return "other" if value < 0 else str(value)


def _path(config: SiteConfig | None, endpoint: str) -> str:
    if config is not None:
        for index, configured in enumerate(config.endpoints):
            if str(configured) == endpoint:
                return "primary" if index == 0 else "backup"
    return "unknown"


# One value per site: (name, type, help, value from the site's stats and configuration at
# `now` and the exporter's start; None leaves the site out of that family).
SiteValue = Callable[[SiteStats, SiteConfig | None, float, float], float | None]
SITE_VALUES: tuple[tuple[str, str, str, SiteValue], ...] = (
    ("site_t1_seconds", "gauge", "t1 of the site's link: BMI acknowledgements must come before it.",
     lambda site, conf, now, start: None if conf is None else conf.params.t1),
    ("site_connections_total", "counter", "TCP connections established to the site (reconnects included).",
     lambda site, conf, now, start: site.connects),
    *((f"site_{direction}_buffer_bytes", "gauge",
       f"Bytes in the {direction} buffer of the site's connection (README, budgets).",
       lambda site, conf, now, start, d=direction: getattr(site.buffers, f"{d}_buffered"))
      for direction in ("send", "receive")),
    *((f"site_{direction}_budget_bytes", "gauge",
       f"{direction.capitalize()} budget of the site's connection: beyond it the connection is closed "
       f"({direction}_budget_exceeded).",
       lambda site, conf, now, start: None if conf is None else budget(conf.params.k))
      for direction in ("send", "receive")),
    ("site_foreign_ca_asdus_total", "counter",
     "ASDUs from the site whose common address is not one of the site's: not forwarded.",
     lambda site, conf, now, start: site.foreign_ca),
    ("site_dropped_asdus_total", "counter",
     "BMI ASDUs for the site dropped: backlog full, older than the site's t1, or the uplink lost.",
     lambda site, conf, now, start: site.dropped_down),
    ("site_ack_delay_max_seconds", "gauge", "Longest BMI acknowledgement delay since the relay started.",
     lambda site, conf, now, start: site.max_ack_delay),
    ("site_test_round_trip_seconds", "gauge", "Round trip of the last TESTFR to the site.",
     lambda site, conf, now, start: site.last_test_round_trip),
    ("site_measured_values_total", "counter", "Measured-value objects received (types 9-14, 34-36).",
     lambda site, conf, now, start: site.measured_values),
    ("site_invalid_measured_values_total", "counter",
     "Measured-value objects whose quality descriptor has IV (invalid) set; they count as zero for the "
     "operator (annex A40 5.3).",
     lambda site, conf, now, start: site.invalid_measured_values),
    ("site_malformed_measurement_asdus_total", "counter",
     "Measured-value ASDUs whose length does not fit their type and object count (relayed all the same).",
     lambda site, conf, now, start: site.malformed_measurements),
    ("site_seconds_since_last_measurement", "gauge",
     "Time since the last measured-value ASDU from the site (since the relay started, if none yet).",
     lambda site, conf, now, start: max(0.0, now - (start if site.last_measurement_at is None
                                                   else site.last_measurement_at))),
)  # fmt: skip


def render_sites(stats: RelayStats, config: RelayFile, now: float, started_at: float) -> str:
    """Every per-site metric, grouped by family, as exposition text."""
    configs = {site.name: site for site in config.sites}
    out: list[str] = []
    add = out.append

    def family(name: str, kind: str, doc: str) -> None:
        add(f"# HELP {PREFIX}{name} {doc}\n# TYPE {PREFIX}{name} {kind}\n")

    # One pass over the live objects first: each site's label and consistent state.
    sites = []
    for name, site in list(stats.sites.items()):
        current, since, before = site.state_snapshot()
        # A site whose task has not started yet still has state_since 0 (the relay sets
        # it when the task starts): count from the exporter's start instead.
        since = max(since, started_at)
        sites.append((f'site="{_escape(name)}"', site, configs.get(name), current, since, before))

    for name, kind, doc, value in SITE_VALUES:
        family(name, kind, doc)
        for label, site, site_config, *_ in sites:
            if (number := value(site, site_config, now, started_at)) is not None:
                add(f"{PREFIX}{name}{{{label}}} {_number(number)}\n")

    family("site_info", "gauge", "A configured site (UPDC).")
    for label, _, site_config, *_ in sites:
        if site_config is not None:
            cas = ",".join(map(str, site_config.common_addresses))
            add(f'{PREFIX}site_info{{{label},common_addresses="{cas}",'
                f'interruptibility="{_escape(site_config.interruptibility)}"}} 1\n')  # fmt: skip
    family("site_up", "gauge", "1 while the site's connection is started (data flows), else 0.")
    for label, _, _, current, _, _ in sites:
        add(f"{PREFIX}site_up{{{label}}} {1 if current == 'started' else 0}\n")
    family("site_state", "gauge", "1 for the state the site's connection is in.")
    for label, _, _, current, _, _ in sites:
        for state in SITE_STATES:
            add(f'{PREFIX}site_state{{{label},state="{state}"}} {1 if state == current else 0}\n')
    family("site_state_seconds_total", "counter", "Time the site's connection spent in each state.")
    for label, _, _, current, since, before in sites:
        for state in SITE_STATES:
            # Our `now` may trail the relay's by a microsecond; never report less than
            # what was already accumulated, or the counter would go backwards.
            total = before.get(state, 0.0) + (max(0.0, now - since) if state == current else 0.0)
            add(f'{PREFIX}site_state_seconds_total{{{label},state="{state}"}} {_number(total)}\n')
    family("site_disconnects_total", "counter", "Connections to the site ended, by cause (iec104.errors.Cause).")
    for label, site, *_ in sites:
        ended = dict(site.disconnects)  # one C-level copy: the relay may add keys
        for code in CAUSES:
            add(f'{PREFIX}site_disconnects_total{{{label},cause="{code.value}"}} {ended.get(code.value, 0)}\n')
    family("site_endpoint_info", "gauge", "Endpoint of the site's current connection, and whether it is the primary.")
    for label, site, site_config, current, _, _ in sites:
        endpoint = site.endpoint
        if current in ("connected", "started") and endpoint:
            add(f'{PREFIX}site_endpoint_info{{{label},endpoint="{_escape(endpoint)}",'
                f'path="{_path(site_config, endpoint)}"}} 1\n')  # fmt: skip

    # dict() copies in C under the GIL: safe while the relay adds new keys.
    kinds = [
        (label, direction, dict(counts), dict(sizes))
        for label, site, *_ in sites
        for direction, counts, sizes in (
            ("up", site.asdus_up_by_kind, site.bytes_up_by_kind),
            ("down", site.asdus_down_by_kind, site.bytes_down_by_kind),
        )
    ]
    family("site_asdus_total", "counter", "ASDUs relayed, by direction, type identification and cause.")
    for label, direction, counts, _ in kinds:
        for (type_id, cause), count in sorted(counts.items()):
            add(f'{PREFIX}site_asdus_total{{{label},direction="{direction}",type_id="{_kind(type_id)}",'
                f'cause="{_kind(cause)}"}} {count}\n')  # fmt: skip
    family("site_asdu_bytes_total", "counter", "ASDU octets relayed, by direction, type identification and cause.")
    for label, direction, counts, sizes in kinds:
        for type_id, cause in sorted(counts):
            add(f'{PREFIX}site_asdu_bytes_total{{{label},direction="{direction}",type_id="{_kind(type_id)}",'
                f'cause="{_kind(cause)}"}} {sizes.get((type_id, cause), 0)}\n')  # fmt: skip

    def histogram(name: str, rows: list[tuple[str, Histogram]]) -> None:
        metric = f"{PREFIX}{name}"
        for label, observed in rows:
            buckets, total = histogram_buckets(observed)
            for le, cumulative in buckets:
                add(f'{metric}_bucket{{{label},le="{le}"}} {cumulative}\n')
            add(f"{metric}_count{{{label}}} {buckets[-1][1]}\n{metric}_sum{{{label}}} {_number(total)}\n")

    family("site_relay_latency_seconds", "histogram",
           "The relay's processing time: from the wake-up that read a frame, or released it if it was held "
           "(no started connection, window full), to the write of its copy.")  # fmt: skip
    histogram("site_relay_latency_seconds", [
        (f'{label},direction="{direction}"', observed)
        for label, site, *_ in sites
        for direction, observed in (("up", site.latency_up), ("down", site.latency_down))
    ])  # fmt: skip
    family(
        "site_ack_delay_seconds",
        "histogram",
        "From forwarding a site's ASDU to the BMI's acknowledgement of it (must stay below the site's t1).",
    )
    histogram("site_ack_delay_seconds", [(label, site.ack_delay) for label, site, *_ in sites])
    return "".join(out)
