"""The incident register's metrics and alert rules: promtool checks and unit-tests the
rules (monitoring/incident_alerts_test.yml has a firing and a silent case for each), and
every metric the rules name is one the incident process exports."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from concentrator.incidents.counters import Counters
from concentrator.incidents.detector import Kind, Opened, Restored
from concentrator.incidents.registrar import Registrar
from concentrator.incidents.store import Register
from monitoring.incident_metrics import IncidentMetrics
from tests.conftest import require_tool
from tests.monitoring.test_metrics import scrape

from .conftest import incidents_config

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run([tool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_promtool_checks_and_tests_the_rules() -> None:
    check = promtool("check", "rules", "incident_alerts.yml")
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr
    run = promtool("test", "rules", "incident_alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_promtool_test() -> None:
    rules = set(re.findall(r"^\s+- alert: (\w+)$", (MONITORING / "incident_alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)$", (MONITORING / "incident_alerts_test.yml").read_text(), re.M))
    assert rules == tested and len(rules) == 6


def collected(tmp: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A register with an open incident, a restored one, a maintenance now and an unsent notice."""
    config = incidents_config(str(tmp))
    r = Registrar(config, Register(config.database))
    now = time.time()
    r.opened(Opened("north", Kind.UNREACHABLE, now - 100, now - 80, ()), now)
    r.opened(Opened("south", Kind.RESTART, now - 50, now - 50, ()), now)
    r.restored(Restored("south", Kind.RESTART, now - 40, "", ""), now)
    r.plan("south", now - 10, now + 3600, "x", now - 20, requested_by_operator=True, config_change=None)
    counters = Counters(asdus=5, dropped=1, send_failures=2)
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in
            ((n, dict(lbl), v) for (n, lbl), v in scrape(IncidentMetrics(config, counters)).items())}  # fmt: skip


def incident_names() -> set[str]:
    """Every sample name the incident process exports (for the dashboard's and rules' checks)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return {name for name, _labels in collected(Path(tmp))}


def test_the_metrics_say_what_the_register_holds(tmp_path: Path) -> None:
    samples = collected(tmp_path)
    assert samples[("concentrator_incidents_open", (("kind", "unreachable"), ("site", "north")))] == 1
    assert samples[("concentrator_incidents_awaiting_close", (("kind", "restart"), ("site", "south")))] == 1
    deadline = samples[("concentrator_incident_deadline_seconds", (("id", "1"), ("kind", "unreachable"),
                                                                   ("site", "north")))]  # fmt: skip
    assert 86_400 <= deadline <= 6 * 86_400
    assert samples[("concentrator_incident_maintenance_active", (("site", "south"),))] == 1
    assert samples[("concentrator_incident_maintenance_active", (("site", "north"),))] == 0
    assert samples[("concentrator_incident_notices_unsent", ())] == 3  # opening x2, planned
    assert samples[("concentrator_incident_notice_send_failures_total", ())] == 2
    assert samples[("concentrator_incident_smtp_configured", ())] == 0


def test_every_metric_the_rules_name_is_exported() -> None:
    named = set(re.findall(r"\bconcentrator_[a-z0-9_]+", (MONITORING / "incident_alerts.yml").read_text()))
    assert named and named <= incident_names(), sorted(named - incident_names())
