"""Prometheus view of the compliance monitor (served by its own process, so a scrape never
touches the relay). Powers in watts (base units); the UPDCs send kW.

    concentrator_shedding_site_power_watts{site}              raw total power, last slot
    concentrator_shedding_credited_power_watts{site}          interruptible power credited (5.3, 5.6)
    concentrator_shedding_credited_power_aggregate_watts      the sum over the sites
    concentrator_shedding_assigned_power_watts{site}          the configured interruptible power
    concentrator_shedding_event_in_progress                   1 during a shedding
    concentrator_shedding_site_in_event{site}                 1 if the site is shed now
    concentrator_shedding_site_compliant{site}                last verdict (live during a shedding), if judged
    concentrator_shedding_site_not_judged{site}               1 if the monitor did not see all of it
    concentrator_shedding_site_verdict_final{site}            1 once that verdict is final
    concentrator_shedding_aggregate_compliant                 last aggregate verdict
    concentrator_shedding_time_skew_seconds{site,interruptibility}  receive time - UPDC time tag
    concentrator_shedding_clock_synchronized, _clock_max_error_seconds  our own clock (adjtimex)
    concentrator_shedding_asdus_total, _dropped_asdus_total, _decode_errors_total,
    concentrator_shedding_record_rows_total, _record_errors_total, _record_write_seconds
    concentrator_shedding_incomplete_slots_total              site slots recorded while copies may have been
                                                              lost (row flagged; `interruptions` says why)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The monitor's plain state is read at scrape time; only its small value types are
# needed at run time (the clock's reading, the verdict's outcome).
from concentrator.shedding.clock import ClockState
from concentrator.shedding.verdict import Status

if TYPE_CHECKING:
    from concentrator.shedding.config import SheddingConfig
    from concentrator.shedding.monitor import SheddingMonitor

P = "concentrator_shedding_"


class SheddingMetrics(Collector):
    def __init__(self, config: SheddingConfig, monitor: SheddingMonitor) -> None:
        self.config = config
        self.monitor = monitor
        self.asdus = 0
        self.dropped = 0
        self.written = 0
        self.flagged = 0  # recorded slots flagged incomplete afterwards (a loss reported later)
        self.record_errors = 0
        self.write_seconds = 0.0
        self.clock = ClockState(None, None, None)

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        event = m.event
        site_power = GaugeMetricFamily(f"{P}site_power_watts", "Raw total site power of the last 4 s slot.",
                                       labels=["site"])  # fmt: skip
        credited = GaugeMetricFamily(f"{P}credited_power_watts",
                                     "Interruptible power credited in the last slot (missing/invalid/off-grid: 0).",
                                     labels=["site"])  # fmt: skip
        assigned = GaugeMetricFamily(f"{P}assigned_power_watts", "Configured interruptible power.", labels=["site"])
        in_event = GaugeMetricFamily(f"{P}site_in_event", "1 while the site is shed.", labels=["site"])
        compliant = GaugeMetricFamily(f"{P}site_compliant", "Last verdict of the site: 1 compliant, 0 not.",
                                      labels=["site"])  # fmt: skip
        not_judged = GaugeMetricFamily(f"{P}site_not_judged",
                                       "1 if the site's last verdict could not be made (copies lost).",
                                       labels=["site"])  # fmt: skip
        final = GaugeMetricFamily(f"{P}site_verdict_final", "1 once the site's last verdict is final.",
                                  labels=["site"])  # fmt: skip
        skew = GaugeMetricFamily(f"{P}time_skew_seconds", "Receive time minus the UPDC's time tag, last tagged point.",
                                 labels=["site", "interruptibility"])  # fmt: skip
        aggregate = 0.0
        for name, state in m.sites.items():
            sample = state.last_sample
            if sample is not None and sample.total is not None:
                site_power.add_metric([name], sample.total * 1000)
            value = sample.credited_load if sample is not None else 0.0
            aggregate += value
            credited.add_metric([name], value * 1000)
            assigned.add_metric([name], state.site.interruptible_kw * 1000)
            shed = event is not None and name in event.sites and event.sites[name].release_at is None
            in_event.add_metric([name], 1 if shed else 0)
            verdict = m.last_verdicts.get(name)
            if verdict is not None:
                if verdict.status is not Status.NOT_JUDGED:
                    compliant.add_metric([name], 1 if verdict.passed else 0)
                not_judged.add_metric([name], 1 if verdict.status is Status.NOT_JUDGED else 0)
                final.add_metric([name], 1 if verdict.final else 0)
            if state.skew is not None:
                kind = "instantaneous" if state.site.instantaneous else "emergency"
                skew.add_metric([name, kind], state.skew)
        yield from (site_power, credited, assigned, in_event, compliant, not_judged, final, skew)
        yield GaugeMetricFamily(f"{P}credited_power_aggregate_watts", "Credited interruptible power, all sites.",
                                value=aggregate * 1000)  # fmt: skip
        yield GaugeMetricFamily(f"{P}event_in_progress", "1 during a shedding.", value=1 if event else 0)
        if m.last_verdicts:
            ok = all(v.passed for v in m.last_verdicts.values() if event is None or v.site in event.sites)
            yield GaugeMetricFamily(f"{P}aggregate_compliant", "Last aggregate verdict.", value=1 if ok else 0)
        if self.clock.synchronized is not None:
            yield GaugeMetricFamily(f"{P}clock_synchronized", "1 if the kernel reports our clock synchronised.",
                                    value=1 if self.clock.synchronized else 0)  # fmt: skip
        if self.clock.max_error is not None:
            yield GaugeMetricFamily(f"{P}clock_max_error_seconds", "Maximum error of our clock (adjtimex).",
                                    value=self.clock.max_error)  # fmt: skip
        for name, doc, value in (
            ("asdus", "ASDUs the monitor received from the relay.", self.asdus),
            ("dropped_asdus", "ASDUs dropped by the relay's full tap queue (verdicts may lack evidence).",
             self.dropped),
            ("decode_errors", "Site ASDUs the decoder refused.", m.decode_errors),
            ("record_rows", "Rows written to the record.", self.written),
            ("record_errors", "Record writes that failed.", self.record_errors),
            ("incomplete_slots", "Site slots recorded while copies of their window may have been lost.",
             m.incomplete_slots + self.flagged),
        ):  # fmt: skip
            yield CounterMetricFamily(f"{P}{name}", doc, value=value)
        yield GaugeMetricFamily(f"{P}record_write_seconds", "Duration of the last record write.",
                                value=self.write_seconds)  # fmt: skip
