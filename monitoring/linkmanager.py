"""Metrics of the link manager (`concentrator netd`) and of the multicast trip path.

Both run apart from the relay (failover and trip messages must not depend on it), so
they serve their metrics themselves, on their own port: a second scrape target (see
conf/prometheus.yml). This module defines the metric names once, for both, as a
collector over plain counters the link manager keeps (like the relay's stats):

    concentrator_linkmanager_ready                          1 once every link is managed
    concentrator_link_active_path{link,path}                1 for the path carrying the link
    concentrator_link_path_healthy{link,path}               1 while the path is healthy
    concentrator_link_all_paths_down{link}                  1 while no path is healthy
    concentrator_link_switches_total{link,reason}           path switches, by reason
    concentrator_link_outage_seconds{link}                  histogram: interruption before
                                                            each failure-driven switch
    concentrator_link_all_paths_down_events_total{link}     times both paths were down
    concentrator_link_probe_answers_total{link,path}        active probes answered
    concentrator_link_probe_misses_total{link,path}         active probes unanswered
    concentrator_link_route_errors_total{link}              route changes that failed
    concentrator_trip_path_installed{group}                 1 while the kernel forwards
                                                            the trip group to the sites
    concentrator_trip_path_repoints_total{group}            trip routes re-pointed to
                                                            another inbound interface
    concentrator_trip_path_engine_info{engine,asked,        1: the engine netd runs (none:
        multicast_routing,nftables_dup}                     refused) and the kernel's features

`link` is "uplink" or a site's name; `path` is "primary" or "backup"; `reason` is one of
netconfig.failover.Reason's values (carrier-down, probe-loss, hold-elapsed, manual,
recovered).

Wiring: the link manager passes its stats objects (netconfig.netd.NetdStats matches
`LinkManagerView` once its LinkStats has an `outage` Histogram, observed with every
failure-driven switch's outage) to `LinkManagerCollector` and serves it with
monitoring.primitives.serve() on its own listen address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .primitives import PREFIX, Histogram, histogram_buckets

PATHS = ("primary", "backup")

# Outage before a switch, seconds. The operator tolerates 20 s; the link manager aims
# well below 1 s, and the alert on a slow switch needs the 1 s bound.
OUTAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)


def outage_histogram() -> Histogram:
    return Histogram(OUTAGE_BUCKETS)


class LinkView(Protocol):
    """What the collector reads of one protected link (netconfig.netd.LinkStats)."""

    @property
    def active(self) -> str: ...  # "primary" or "backup"
    @property
    def all_down(self) -> bool: ...
    @property
    def healthy(self) -> Mapping[str, bool]: ...
    @property
    def switches_by_reason(self) -> Mapping[str, int]: ...
    @property
    def outage(self) -> Histogram: ...
    @property
    def all_down_total(self) -> int: ...
    @property
    def probe_answers_total(self) -> Mapping[str, int]: ...
    @property
    def probe_misses_total(self) -> Mapping[str, int]: ...
    @property
    def route_errors_total(self) -> int: ...


class LinkManagerView(Protocol):
    """What the collector reads of the link manager (netconfig.netd.NetdStats)."""

    @property
    def ready(self) -> bool: ...
    @property
    def links(self) -> Mapping[str, LinkView]: ...


@dataclass
class TripPathStats:
    """Plain counters for the multicast trip path (issue 4 fills them)."""

    installed: dict[str, bool] = field(default_factory=dict)  # group -> forwarding entry present
    repoints: dict[str, int] = field(default_factory=dict)  # group -> re-pointed after a switch
    engine: str = ""  # smcroute, nftables, or none (refused on this kernel); "" before netd chose
    asked: str = ""  # multicast.engine as configured: auto, smcroute or nftables
    kernel: dict[str, str] = field(default_factory=dict)  # feature -> yes, no or unknown


class LinkManagerCollector(Collector):
    def __init__(self, links: LinkManagerView | None, trip: TripPathStats | None = None) -> None:
        self.links = links
        self.trip = trip

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.links is not None:
            yield from self._links(self.links)
        if self.trip is not None:
            yield from self._trip(self.trip)

    def _links(self, manager: LinkManagerView) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}linkmanager_ready", "1 once the link manager manages every configured link.",
            value=1 if manager.ready else 0,
        )  # fmt: skip
        link_path = ["link", "path"]
        active = GaugeMetricFamily(f"{PREFIX}link_active_path", "1 for the path carrying the link.", labels=link_path)
        healthy = GaugeMetricFamily(
            f"{PREFIX}link_path_healthy", "1 while the path is healthy (carrier up, probes answered).", labels=link_path
        )
        all_down = GaugeMetricFamily(
            f"{PREFIX}link_all_paths_down", "1 while no path of the link is healthy.", labels=["link"]
        )
        switches = CounterMetricFamily(
            f"{PREFIX}link_switches", "Switches from one path to the other, by reason.", labels=["link", "reason"]
        )
        outage = HistogramMetricFamily(
            f"{PREFIX}link_outage_seconds",
            "Interruption before each failure-driven switch: from the last moment the failed path was known good "
            "to the switch.",
            labels=["link"],
        )
        all_down_total = CounterMetricFamily(
            f"{PREFIX}link_all_paths_down_events", "Times both paths of the link were down at once.", labels=["link"]
        )
        answers = CounterMetricFamily(f"{PREFIX}link_probe_answers", "Active probes answered.", labels=link_path)
        misses = CounterMetricFamily(f"{PREFIX}link_probe_misses", "Active probes unanswered.", labels=link_path)
        route_errors = CounterMetricFamily(f"{PREFIX}link_route_errors", "Route changes that failed.", labels=["link"])
        # dict() copies in C under the GIL: safe while the link manager adds keys.
        for name, link in dict(manager.links).items():
            current = link.active
            health = dict(link.healthy)
            answered, missed = dict(link.probe_answers_total), dict(link.probe_misses_total)
            for path in PATHS:
                active.add_metric([name, path], 1 if path == current else 0)
                healthy.add_metric([name, path], 1 if health.get(path) else 0)
                answers.add_metric([name, path], answered.get(path, 0))
                misses.add_metric([name, path], missed.get(path, 0))
            all_down.add_metric([name], 1 if link.all_down else 0)
            for reason, count in sorted(dict(link.switches_by_reason).items()):
                switches.add_metric([name, reason], count)
            buckets, total = histogram_buckets(link.outage)
            outage.add_metric([name], buckets, total)
            all_down_total.add_metric([name], link.all_down_total)
            route_errors.add_metric([name], link.route_errors_total)
        yield from (active, healthy, all_down, switches, outage, all_down_total, answers, misses, route_errors)

    def _trip(self, trip: TripPathStats) -> Iterator[Metric]:
        installed = GaugeMetricFamily(
            f"{PREFIX}trip_path_installed",
            "1 while the kernel's multicast forwarding entry for the trip group is installed.",
            labels=["group"],
        )
        repoints = CounterMetricFamily(
            f"{PREFIX}trip_path_repoints",
            "Times the trip group's forwarding entry was re-pointed to another inbound interface.",
            labels=["group"],
        )
        for group, present in sorted(dict(trip.installed).items()):
            installed.add_metric([group], 1 if present else 0)
        for group, count in sorted(dict(trip.repoints).items()):
            repoints.add_metric([group], count)
        yield from (installed, repoints)
        if trip.engine:
            kernel = dict(trip.kernel)
            features = sorted(kernel)
            engine = GaugeMetricFamily(
                f"{PREFIX}trip_path_engine_info",
                "The trip path's engine on this kernel (none: refused), the one configured, and the kernel's "
                "multicast routing and nftables dup.",
                labels=["engine", "asked", *features],
            )
            engine.add_metric([trip.engine, trip.asked, *(kernel[f] for f in features)], 1)
            yield engine
