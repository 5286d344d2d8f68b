"""Debian's real Prometheus scraping the relay in an interop scenario: 12 c104 UPDCs,
the relay with its exporter, a c104 BMI. Prometheus runs as a subprocess on loopback
with a temporary configuration and data directory, scrapes every second and evaluates
monitoring/alerts.yml; the test waits on queries, never on sleeps.

Besides the relay (job "concentrator"), a link-manager exporter (job "concentrator-netd")
serves LinkManagerCollector over *synthetic* counters: the link manager and the trip path
do not export yet (see monitoring/README.md), so the dashboard panels that read them are
checked here only for query syntax and label names, listed in NETD_PANELS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c104
import trio
import yaml

from concentrator.config import Endpoint
from concentrator.relay.driver import Relay
from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.updc import UpdcSimulator
from monitoring.exporter import serve_relay
from monitoring.linkmanager import LinkManagerCollector, TripPathStats
from monitoring.primitives import serve
from tests.conftest import require_tool
from tests.helpers import free_port, relay_config, wait_for
from tests.monitoring.test_metrics import FakeLink, FakeManager
from tests.monitoring.test_rules_and_dashboard import MONITORING, dashboard_queries

SITES = 12
FIRST_CA = 101
INVALID_SITE = "site-03"  # sends its measurements with IV set
KILLED_SITE = "site-07"
QUIET_SITE = "site-12"  # samples every 5 s: idle longer than t3, so the relay sends TESTFR

# Dashboard panels whose data comes from the link manager or the trip path (synthetic
# here), and those that cannot have data in this scenario, with why.
NETD_PANELS = {
    "Active path", "Path switches", "Outage before a switch", "Trip path installed", "Trip routes re-pointed",
}  # fmt: skip
NO_DATA_HERE = {
    # The relay tests an idle connection only; the BMI's S-frames keep the uplink busy.
    "TESTFR round trip to the BMI": "the uplink is never idle for t3 in this scenario",
    # The compliance monitor (its own process and job) does not run here; its panels are
    # checked against a real Prometheus in tests/shedding/test_metrics.py.
    **{title: "no shedding monitor in this scenario" for title, _ in dashboard_queries() if "shedding" in _},
    # The incident register (its own process and job) neither: tests/incidents/test_dashboard.py.
    **{title: "no incident register in this scenario" for title, _ in dashboard_queries() if "_incident" in _},
}
# Grafana's variables, as a dashboard over the last 5 minutes would expand them.
VARIABLES = {"$instance": ".*", "$__rate_interval": "10s", "$__range": "5m"}


class Prometheus:
    def __init__(self, url: str, promtool: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.promtool = promtool
        self.process = process

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    async def ready(self, timeout: float = 30.0) -> None:
        with trio.move_on_after(timeout):
            while not await trio.to_thread.run_sync(self._ready):
                assert self.process.poll() is None, f"prometheus exited with {self.process.returncode}"
                await trio.sleep(0.05)
            return
        raise AssertionError(f"prometheus not ready after {timeout} s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on any error Prometheus reports."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        assert not body.get("warnings"), body["warnings"]
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str) -> dict[str, float]:
        """{value of the `site` label (or ""): value} of an instant query."""
        return {r["metric"].get("site", ""): float(r["value"][1]) for r in self.query(expr)}

    def promtool_query(self, expr: str) -> str:
        result = subprocess.run(
            [self.promtool, "query", "instant", self.url, expr], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    async def wait(
        self, expr: str, condition: Callable[[dict[str, float]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, float]:
        last: dict[str, float] = {}
        with trio.move_on_after(timeout):
            while True:
                last = await trio.to_thread.run_sync(self.values, expr)
                if condition(last):
                    return last
                await trio.sleep(0.25)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last {expr} = {last}")


@contextlib.contextmanager
def prometheus(tmp_path: Path, targets: dict[str, int]) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    promtool = require_tool("promtool", "prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", promtool, process)
    except BaseException:
        print((tmp_path / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


@dataclass
class Scenario:
    updcs: dict[str, UpdcSimulator]
    relay: Relay
    netd: tuple[FakeManager, TripPathStats]
    ports: dict[str, int]


@asynccontextmanager
async def scenario() -> AsyncIterator[Scenario]:
    with ExitStack() as stack:
        updcs = {}
        for n in range(SITES):
            name = f"site-{n + 1:02d}"
            period = 5.0 if name == QUIET_SITE else 0.2
            updcs[name] = stack.enter_context(UpdcSimulator(name, FIRST_CA + n, sample_period=period, seed=n))
        updcs[INVALID_SITE].invalid_measurements = True
        # t3 = 1 s toward the sites: the quiet one gets tested (TESTFR) between samples.
        config = relay_config([u.port for u in updcs.values()], site={"t3": 1})
        relay = Relay(config)
        relay_metrics = serve_relay(relay.stats, config, Endpoint("127.0.0.1", 0))
        stack.callback(relay_metrics.close)
        manager = FakeManager(links={"uplink": FakeLink(), "site-01": FakeLink()})
        trip = TripPathStats({"239.192.0.1": True, "239.192.0.2": True}, {"239.192.0.1": 0})
        netd_metrics = serve([LinkManagerCollector(manager, trip)], Endpoint("127.0.0.1", 0))
        stack.callback(netd_metrics.close)
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            bmi = BmiSimulator("127.0.0.1", relay.listen_port, [u.common_address for u in updcs.values()],
                               init=c104.Init.ALL)  # fmt: skip
            stack.callback(bmi.stop)
            bmi.start()
            assert await trio.to_thread.run_sync(bmi.wait_started, 10.0), "the BMI never got started"
            await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="all sites started")
            yield Scenario(updcs, relay, (manager, trip), {"concentrator": relay_metrics.port,
                                                           "concentrator-netd": netd_metrics.port})  # fmt: skip
            nursery.cancel_scope.cancel()


def firing(output: str, alert: str) -> bool:
    return f'alertname="{alert}"' in output and 'alertstate="firing"' in output


async def test_prometheus_scrapes_the_relay_alerts_fire_and_dashboard_queries_return_data(tmp_path: Path) -> None:
    async with scenario() as s:
        with prometheus(tmp_path, s.ports) as prom:
            await prom.ready()
            # Prometheus picks up new targets after about 5 s.
            await prom.wait("sum(concentrator_site_up)", lambda v: v.get("") == SITES, "12 sites up", timeout=40)
            assert set(prom.values("concentrator_site_up == 1")) == set(s.updcs)
            assert prom.values('up{job="concentrator"}') == {"": 1.0}

            # Latency histogram populated, site to BMI, for every site.
            counts = await prom.wait(
                'concentrator_site_relay_latency_seconds_count{direction="up"}',
                lambda v: len(v) == SITES and all(c > 0 for c in v.values()), "relay latency observed for every site",
            )  # fmt: skip
            buckets = 'concentrator_site_relay_latency_seconds_bucket{direction="up"}'
            await prom.wait(
                f"histogram_quantile(0.99, sum by (le) (rate({buckets}[30s])))",
                lambda v: 0 < v.get("", 0) <= 1.0, "a relay latency p99 between 0 and 1 s",
            )  # fmt: skip
            assert sum(counts.values()) > 0

            # Invalid quality read from the quality descriptors: that site only.
            invalid = await prom.wait(
                "concentrator_site_invalid_measured_values_total", lambda v: v.get(INVALID_SITE, 0) > 0,
                "invalid measured values from the invalid site",
            )  # fmt: skip
            assert {site for site, count in invalid.items() if count > 0} == {INVALID_SITE}
            measured = prom.values("concentrator_site_measured_values_total")
            assert all(measured[site] > 0 for site in s.updcs)

            # The link manager's synthetic uplink switches to its backup after a 0.4 s
            # outage, so the failover panels have something to show.
            manager, _ = s.netd
            uplink = manager.links["uplink"]
            uplink.outage.observe(0.4)
            uplink.switches_by_reason["probe-loss"] = 1
            uplink.active = "backup"
            _, trip = s.netd
            trip.repoints["239.192.0.1"] = 1

            # One site killed: down in Prometheus, then its alert fires after 20 s.
            await trio.to_thread.run_sync(s.updcs[KILLED_SITE].stop)
            await prom.wait(
                f'concentrator_site_up{{site="{KILLED_SITE}"}}', lambda v: v.get(KILLED_SITE) == 0, "the site down"
            )  # fmt: skip
            with trio.move_on_after(45):
                while not firing(out := await trio.to_thread.run_sync(
                        prom.promtool_query, f'ALERTS{{alertname="ConcentratorSiteDown", site="{KILLED_SITE}"}}'),
                        "ConcentratorSiteDown"):  # fmt: skip
                    await trio.sleep(0.5)
            assert firing(out, "ConcentratorSiteDown"), f"ConcentratorSiteDown never fired: {out!r}"
            down = prom.query('ALERTS{alertname="ConcentratorSiteDown", alertstate="firing"}')
            assert [r["metric"]["site"] for r in down] == [KILLED_SITE]
            invalid_alerts = prom.query('ALERTS{alertname="ConcentratorInvalidMeasurements", alertstate="firing"}')
            assert [r["metric"]["site"] for r in invalid_alerts] == [INVALID_SITE]
            assert not prom.query('ALERTS{alertname=~"ConcentratorUplinkDown|ConcentratorTargetDown"}')
            # Availability over the run is below 1 for the killed site only.
            availability = prom.values(
                'sum by (site) (increase(concentrator_site_state_seconds_total{state="started"}[5m]))'
                " / sum by (site) (increase(concentrator_site_state_seconds_total[5m]))"
            )
            assert availability[KILLED_SITE] < 0.9
            assert all(0.9 < availability[site] <= 1.0 for site in s.updcs if site != KILLED_SITE), availability

            # Every query of the dashboard returns data without error (NETD_PANELS from the
            # synthetic link-manager exporter).
            titles = {title for title, _ in dashboard_queries()}
            assert NETD_PANELS <= titles and set(NO_DATA_HERE) <= titles
            empty = []
            for title, expr in dashboard_queries():
                for variable, replacement in VARIABLES.items():
                    expr = expr.replace(variable, replacement)
                assert "$" not in expr, f"{title}: unexpanded variable in {expr}"
                result = await trio.to_thread.run_sync(prom.query, expr)  # raises on a bad query
                if not result and title not in NO_DATA_HERE:
                    empty.append(f"{title}: {expr}")
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
