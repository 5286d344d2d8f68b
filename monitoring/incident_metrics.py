"""Prometheus view of the incident register, served by the incident process (a scrape
reads the register read-only in the exporter's thread; nothing touches the relay).

    concentrator_incidents_open{site,kind}                    1 per incident still open (no end yet)
    concentrator_incidents_awaiting_close{site,kind}          restored, closing notice not yet written
    concentrator_incident_deadline_seconds{id,site,kind}      seconds to the 3-working-day deadline
                                                              of each open incident (negative: past)
    concentrator_incidents_total{kind}                        incidents ever registered
    concentrator_incident_notices_unsent                      notices the SMTP relay has not accepted
    concentrator_incident_notice_oldest_unsent_seconds        age of the oldest of them
    concentrator_incident_notices_sent_total, _notice_send_failures_total
    concentrator_incident_maintenance_active{site}            1 inside a planned maintenance window
    concentrator_incident_smtp_configured                     1 with an SMTP relay, 0: send by hand
    concentrator_incident_asdus_total, _dropped_asdus_total   copies received from the relay, dropped
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# A scrape reads the register itself (read-only), and counts incidents of every kind.
from concentrator.incidents.detector import Kind
from concentrator.incidents.store import Register

if TYPE_CHECKING:
    from concentrator.incidents.config import IncidentsConfig
    from concentrator.incidents.counters import Counters

P = "concentrator_incident"


class IncidentMetrics(Collector):
    def __init__(self, config: IncidentsConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        register = Register(self.config.database, read_only=True)
        try:
            incidents = register.incidents()
            notices = register.notices()
        finally:
            register.close()
        opened = GaugeMetricFamily(f"{P}s_open", "Incidents still open (the UPDC not yet back).",
                                   labels=["site", "kind"])  # fmt: skip
        awaiting = GaugeMetricFamily(f"{P}s_awaiting_close", "Incidents restored whose closing notice waits for "
                                     "`concentrator incidents close`.", labels=["site", "kind"])  # fmt: skip
        deadline = GaugeMetricFamily(f"{P}_deadline_seconds", "Seconds left to the 3-working-day deadline of an "
                                     "open incident (annex A40 5.7.1); negative once past.",
                                     labels=["id", "site", "kind"])  # fmt: skip
        total = CounterMetricFamily(f"{P}s", "Incidents registered.", labels=["kind"])
        maintenance = GaugeMetricFamily(f"{P}_maintenance_active", "1 inside a planned maintenance window.",
                                        labels=["site"])  # fmt: skip
        per_kind = dict.fromkeys((str(k) for k in Kind), 0)
        active = {s.name: 0 for s in self.config.sites}
        for i in incidents:
            per_kind[str(i.kind)] += 1
            if i.kind is Kind.MAINTENANCE:
                if i.end is not None and i.start <= now < i.end:
                    active[i.site] = 1
                continue
            if i.end is None:
                opened.add_metric([i.site, str(i.kind)], 1)
                if i.deadline is not None:
                    deadline.add_metric([str(i.id), i.site, str(i.kind)], i.deadline - now)
            elif i.closed is None:
                awaiting.add_metric([i.site, str(i.kind)], 1)
        for kind, count in per_kind.items():
            total.add_metric([kind], count)
        for site, value in active.items():
            maintenance.add_metric([site], value)
        unsent = [n for n in notices if n.sent is None]
        yield from (opened, awaiting, deadline, total, maintenance)
        yield GaugeMetricFamily(f"{P}_notices_unsent", "Notices the SMTP relay has not accepted (in the spool).",
                                value=len(unsent))  # fmt: skip
        oldest = min((n.created for n in unsent), default=now)
        yield GaugeMetricFamily(f"{P}_notice_oldest_unsent_seconds", "Age of the oldest unsent notice.",
                                value=now - oldest)  # fmt: skip
        yield CounterMetricFamily(f"{P}_notices_sent", "Notices the SMTP relay accepted.",
                                  value=sum(1 for n in notices if n.sent is not None))  # fmt: skip
        yield CounterMetricFamily(f"{P}_notice_send_failures", "Failed attempts to hand a notice to the SMTP relay.",
                                  value=self.counters.send_failures)  # fmt: skip
        yield GaugeMetricFamily(f"{P}_smtp_configured", "1 with an SMTP relay configured; 0: notices are sent by hand.",
                                value=int(self.config.smtp is not None))  # fmt: skip
        yield CounterMetricFamily(f"{P}_asdus", "ASDU copies received from the relay.", value=self.counters.asdus)
        yield CounterMetricFamily(f"{P}_dropped_asdus", "ASDU copies the relay's tap dropped (queue full).",
                                  value=self.counters.dropped)  # fmt: skip
