"""Alert rules through promtool (check and unit tests), the example scrape configuration,
and the dashboard's structure and metric names (its queries run against a real
Prometheus in test_prometheus.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from concentrator.ha.state import HaState
from concentrator.mirror.stats import MirrorStats
from concentrator.relay.stats import RelayStats, SiteStats
from monitoring.ha_metrics import HaCollector
from monitoring.linkmanager import LinkManagerCollector, TripPathStats
from monitoring.relay_metrics import RelayMetrics
from tests.conftest import require_tool
from tests.helpers import relay_config
from tests.incidents.test_alerts import incident_names
from tests.monitoring.test_metrics import FakeLink, FakeManager, scrape
from tests.shedding.test_metrics import shedding_names

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
ROWS = [
    "Sites",
    "Latency",
    "Uplink and failover",
    "Data quality",
    "Trip path and configuration",
    "Shedding compliance",
    "Incidents",
]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 25 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_test() -> None:
    rules = set(re.findall(r"^\s+- alert: (\w+)$", (MONITORING / "alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)$", (MONITORING / "alerts_test.yml").read_text(), re.M))
    assert rules == tested


def test_the_example_scrape_configuration_is_valid() -> None:
    result = promtool("check", "config", str(ROOT / "conf" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, annotations included."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(str(p["title"]), str(t["expr"])) for p in panels(dashboard) for t in p.get("targets", [])]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"]]
    return queries


def test_dashboard_has_one_row_per_concern_and_queries_in_every_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    all_panels = panels(dashboard)
    assert [p["title"] for p in all_panels if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for panel in all_panels:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def exported_names() -> set[str]:
    """Every sample name the relay's, the link manager's and the HA supervisor's collectors produce."""
    config = relay_config([2404])
    stats = RelayStats(mirror=MirrorStats(last_error="x"))
    stats.sites["site-01"] = SiteStats("site-01", (101,))
    stats.sites["site-01"].last_test_round_trip = stats.uplink.last_test_round_trip = 0.001
    stats.sites["site-01"].endpoint = "127.0.0.1:2404"
    stats.sites["site-01"].state = "started"
    stats.sites["site-01"].record_up(bytes((36, 1, 3, 0, 101, 0)) + bytes(15), 0.0)
    stats.uplink.active_peer = "BMI 127.0.0.1"
    relay = RelayMetrics(stats, config, lambda: 0.0)
    uplink = FakeLink(switches_by_reason={"probe-loss": 1})
    trip = TripPathStats({"239.192.0.1": True}, {"239.192.0.1": 1})
    ha = HaCollector(HaState("conc-a", 150, last_takeover_seconds=0.05))
    names = {name for name, _ in scrape(relay, LinkManagerCollector(FakeManager(links={"uplink": uplink}), trip), ha)}
    return names | shedding_names() | incident_names()


@pytest.mark.parametrize("source", ["dashboard.json", "alerts.yml"])
def test_every_metric_named_is_exported(source: str) -> None:
    text = (MONITORING / source).read_text()
    named = set(re.findall(r"\bconcentrator_[a-z0-9_]+", text))
    assert named and named <= exported_names(), sorted(named - exported_names())
