"""The monitor's metrics: values from a scrape, and a real Prometheus scraping them with the
alert rules loaded: the non-compliance alert fires for the failing site only, and every
shedding panel of the dashboard returns data."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from concentrator.config import Endpoint
from concentrator.shedding.clock import ClockState
from concentrator.shedding.config import SheddingConfig, ShedSite, SitePoints
from concentrator.shedding.monitor import SheddingMonitor
from concentrator.sim.points import breaker_command, double_point, float_measurements, single_point
from monitoring.primitives import serve
from monitoring.shedding_metrics import SheddingMetrics
from tests.monitoring.test_metrics import scrape, value

POINTS = SitePoints(1001, (1002,), (2001,), 3001, 3002, lock=2002)
SITES = (ShedSite("good", (101,), False, POINTS, 1000, 400), ShedSite("bad", (102,), True, POINTS, 1000, 400),
         ShedSite("idle", (103,), False, POINTS, 1000, 400))  # fmt: skip
PERIOD = 0.5
CONFIG = SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), PERIOD, 1000, SITES)


class Play:
    """Every site draws 900 kW with a 400 kW load; good and bad are shed at `shed()`;
    bad reconnects 200 kW (band: 900 - 400 + 50 = 550 kW) and its tags are 7 ms late."""

    def __init__(self, now: float) -> None:
        self.monitor = SheddingMonitor(CONFIG, now)
        self.shed_at: float | None = None

    def samples(self, now: float) -> None:
        for ca, name in ((101, "good"), (102, "bad"), (103, "idle")):
            shed = self.shed_at is not None and name != "idle"
            total = 500 + (200 if name == "bad" else 0) if shed else 900
            tag = now - (0.007 if name == "bad" else 0.001)
            self.monitor.site_asdu(name, float_measurements(ca, [(1001, total), (1002, 0 if shed else 400)], tag), now)

    def shed(self, now: float) -> None:
        self.shed_at = now
        for ca, name in ((101, "good"), (102, "bad")):
            self.monitor.bmi_asdu(breaker_command(ca, False), now)
            self.monitor.site_asdu(name, double_point(ca, 2001, False, now + 0.05), now + 0.06)
            self.monitor.site_asdu(name, single_point(ca, 2002, True, now + 0.05), now + 0.06)


def shedding_names() -> set[str]:
    """Every sample name the monitor exports (for the dashboard and rules checks)."""
    play = Play(1_800_000_000.0)
    play.samples(1_800_000_000.0)
    play.shed(1_800_000_000.1)
    play.monitor.tick(1_800_000_002.0)
    metrics = SheddingMetrics(CONFIG, play.monitor)
    metrics.clock = ClockState(True, 0.01, 0.001)
    return {name for name, _ in scrape(metrics)}


def test_scrape_shows_credited_power_event_verdicts_and_skew() -> None:
    t = 1_800_000_000.0
    play = Play(t)
    play.samples(t + 0.2)
    play.monitor.tick(t + 0.5)
    metrics = SheddingMetrics(CONFIG, play.monitor)
    s = scrape(metrics)
    assert value(s, "concentrator_shedding_credited_power_watts", site="good") == 400_000
    assert value(s, "concentrator_shedding_credited_power_aggregate_watts") == 1_200_000
    assert value(s, "concentrator_shedding_event_in_progress") == 0
    play.shed(t + 0.6)
    for k in range(1, 4):
        play.samples(t + 0.6 + k * PERIOD)
    play.monitor.tick(t + 2.6)
    s = scrape(metrics)
    assert value(s, "concentrator_shedding_event_in_progress") == 1
    assert value(s, "concentrator_shedding_site_in_event", site="good") == 1
    assert value(s, "concentrator_shedding_site_in_event", site="idle") == 0
    assert value(s, "concentrator_shedding_site_compliant", site="good") == 1
    assert value(s, "concentrator_shedding_site_compliant", site="bad") == 0
    assert value(s, "concentrator_shedding_credited_power_watts", site="good") == 0
    assert value(s, "concentrator_shedding_site_power_watts", site="bad") == 700_000
    assert abs(value(s, "concentrator_shedding_time_skew_seconds", site="bad", interruptibility="instantaneous")
               - 0.007) < 1e-6  # fmt: skip


async def test_prometheus_alerts_on_the_failing_site_and_the_panels_have_data(tmp_path: Path) -> None:
    from tests.monitoring.test_prometheus import VARIABLES, prometheus
    from tests.monitoring.test_rules_and_dashboard import dashboard_queries

    play = Play(time.time())
    metrics = SheddingMetrics(CONFIG, play.monitor)
    metrics.clock = ClockState(True, 0.01, 0.001)
    server = serve([metrics], Endpoint("127.0.0.1", 0), process=False)
    try:
        async with trio.open_nursery() as nursery:

            async def drive() -> None:
                while True:
                    play.samples(time.time())
                    play.monitor.tick(time.time())
                    await trio.sleep(PERIOD)

            nursery.start_soon(drive)
            with prometheus(tmp_path, {"concentrator-shedding": server.port}) as prom:
                await prom.ready()
                await prom.wait("concentrator_shedding_credited_power_watts", lambda v: len(v) == 3, "3 sites",
                                timeout=40)  # fmt: skip
                play.shed(time.time())
                await prom.wait('ALERTS{alertname="ConcentratorSheddingNonCompliant", alertstate="firing"}',
                                lambda v: set(v) == {"bad"}, "the alert for the bad site only")  # fmt: skip
                empty = []
                for title, expr in dashboard_queries():
                    if "concentrator_shedding_" not in expr:
                        continue
                    for variable, replacement in VARIABLES.items():
                        expr = expr.replace(variable, replacement)
                    if not await trio.to_thread.run_sync(prom.query, expr):
                        empty.append(f"{title}: {expr}")
                assert not empty, empty
            nursery.cancel_scope.cancel()
    finally:
        server.close()
