"""`concentrator shedding report` over a record written by the monitor core: verdict lines,
--since and --event filters, and an HTML page whose SVG plots parse as XML."""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from concentrator.shedding.record import ShedRecord
from concentrator.shedding.report import parse_since, report
from tests.shedding.test_monitor import CONFIG, SheddingMonitor, T, shed


def recorded(tmp_path: Path, misbehave: str = "reconnect") -> str:
    m = SheddingMonitor(CONFIG, T - 3)
    shed(m, misbehave)
    m.tick(T + 20)
    record = ShedRecord(str(tmp_path / "r.sqlite"))
    record.write(m.take_records())
    record.close()
    return str(tmp_path / "r.sqlite")


def test_report_prints_the_verdict_with_its_reason_and_writes_a_page(tmp_path: Path) -> None:
    db = recorded(tmp_path)
    out, judged = report(db, since=None, event_id=None, html_dir=str(tmp_path))
    assert judged
    assert "event 1: " in out and "(command), sites a" in out
    assert "  a: FAIL  P0 900.0 kW  Pd 400.0 kW  limit 550.0 kW  opening 120 ms" in out
    assert re.search(r"    power_above_band: Pi 620\.0 kW > P0 900\.0 - Pd 400\.0 \+ 50\.0 = 550\.0 kW at ", out)
    assert "  aggregate: FAIL: sites a" in out
    page = (tmp_path / "shedding-event-1.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2  # the aggregate and site a
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert root.findall(".//{http://www.w3.org/2000/svg}polyline")  # Pi and the band


def test_filters(tmp_path: Path) -> None:
    db = recorded(tmp_path)
    assert report(db, since=None, event_id=2, html_dir=None)[0] == "no shedding events recorded with id 2\n"
    # --since selects by overlap: the event ran from T to T + 12.5.
    assert report(db, since=T + 13, event_id=None, html_dir=None)[0] == "no shedding events recorded\n"
    assert "event 1:" in report(db, since=T + 12, event_id=1, html_dir=None)[0]
    assert "event 1:" in report(db, since=T - 60, event_id=None, html_dir=None)[0]


def test_since_accepts_relative_and_iso_times_and_refuses_others() -> None:
    assert parse_since("7d", 1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("30m", 1_000_000.0) == 1_000_000.0 - 1800
    assert parse_since("2027-01-15T08:00:00", 0) == 1_800_000_000.0  # UTC unless it says otherwise
    assert parse_since("2027-01-15T09:00:00+01:00", 0) == 1_800_000_000.0
    with pytest.raises(argparse.ArgumentTypeError, match="7d, 12h, 30m or an ISO 8601 time"):
        parse_since("last week", 0)
