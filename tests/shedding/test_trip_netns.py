"""A trip forwarded by the kernel starts a shedding in the monitor (real namespaces): the
monitor process runs in the concentrator's namespace, reads only the kernel's multicast
forwarding counters, and no socket there joins the trip group."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from concentrator.config import Endpoint
from concentrator.shedding.config import SheddingConfig, ShedSite, SitePoints
from concentrator.shedding.tap import CHILD, config_frame
from concentrator.sidecar import command
from tests.lab.harness import Lab, TripTraffic
from tests.netns.test_trip_path import GROUP, assert_nobody_joined, lab, trips  # noqa: F401 (fixtures)

pytestmark = pytest.mark.netns

POINTS = SitePoints(1001, (1002,), (2001,), 3001, 3002)
SITES = (ShedSite("tripped", (101,), True, POINTS, 1000, 400, trip_group=GROUP),
         ShedSite("other", (102,), True, POINTS, 1000, 400, trip_group="239.192.99.1"))  # fmt: skip


def sampled(db: Path) -> bool:
    try:
        with sqlite3.connect(db) as c:
            return bool(c.execute("SELECT count(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:  # the monitor is creating the schema
        return False


def events(db: Path) -> list[tuple[str, list[str]]]:
    try:
        with sqlite3.connect(db) as c:
            return [(t, json.loads(s)) for t, s in c.execute("SELECT trigger, sites FROM events")]
    except sqlite3.OperationalError:  # not created yet
        return []


def test_a_forwarded_trip_starts_a_shedding_of_the_sites_of_its_group(lab: Lab, trips: TripTraffic,  # noqa: F811
                                                                       tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "record.sqlite"
    config = SheddingConfig(str(db), 60, Endpoint("127.0.0.1", 0), 0.2, 1000, SITES)
    monitor = subprocess.Popen(["ip", "netns", "exec", lab.ns("conc"), *command(CHILD)],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert monitor.stdin is not None
        monitor.stdin.write(config_frame(config))
        monitor.stdin.flush()
        deadline = time.monotonic() + 10
        while not db.exists() or not sampled(db):
            assert monitor.poll() is None and time.monotonic() < deadline, (
                monitor.stderr.read() if monitor.stderr else ""
            )
            time.sleep(0.05)
        assert events(db) == []  # nothing forwarded yet: no shedding
        trips.send(3)
        deadline = time.monotonic() + 10
        while not events(db):
            assert time.monotonic() < deadline, "no event from the forwarded trip"
            time.sleep(0.05)
        assert events(db) == [(f"trip {GROUP}", ["tripped"])]
        assert_nobody_joined(lab)
    finally:
        monitor.kill()
        monitor.wait()
