"""The dashboard's Incidents row against a real Prometheus scraping the incident
process's metrics: every query of the row parses and returns data."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from concentrator.configbase import Endpoint
from concentrator.incidents.counters import Counters
from concentrator.incidents.detector import Kind, Opened
from concentrator.incidents.registrar import Registrar
from concentrator.incidents.store import Register
from monitoring.incident_metrics import IncidentMetrics
from monitoring.primitives import serve
from tests.monitoring.test_prometheus import VARIABLES, prometheus
from tests.monitoring.test_rules_and_dashboard import dashboard_queries

from .conftest import incidents_config


async def test_the_incidents_row_returns_data(tmp_path: Path) -> None:
    config = incidents_config(str(tmp_path))
    r = Registrar(config, Register(config.database))
    now = time.time()
    r.opened(Opened("north", Kind.UNREACHABLE, now - 100, now - 80, ()), now)
    r.plan("south", now - 10, now + 3600, "x", now - 20, requested_by_operator=True, config_change=None)
    server = serve([IncidentMetrics(config, Counters())], Endpoint("127.0.0.1", 0), process=False)
    try:
        with prometheus(tmp_path, {"concentrator-incidents": server.port}) as prom:
            await prom.ready()
            await prom.wait("concentrator_incidents_open", lambda v: v == {"north": 1.0}, "the open incident", 40)
            await trio.sleep(3)  # increase() needs two scrapes
            queries = [(t, e) for t, e in dashboard_queries() if "concentrator_incident" in e]
            assert len(queries) == 8
            empty = []
            for title, expr in queries:
                for variable, replacement in VARIABLES.items():
                    expr = expr.replace(variable, replacement)
                if not await trio.to_thread.run_sync(prom.query, expr):
                    empty.append(f"{title}: {expr}")
            assert not empty, empty
    finally:
        server.close()
