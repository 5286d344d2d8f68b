"""`concentrator shedding report` over a record written by the monitor core: verdict lines,
--since and --event filters, and an HTML page whose SVG plots parse as XML."""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from pytest import CaptureFixture

from concentrator.cli import shedding_sources
from concentrator.incidents.verdicts import RegisterWord
from concentrator.shedding.record import ShedRecord
from concentrator.shedding.report import NOT_JUDGED_EXIT, main, parse_since, report
from concentrator.shedding.verdict import Interruption, Status
from concentrator.sim.points import breaker_command, double_point, release_command, single_point
from tests.shedding.test_monitor import CONFIG, SheddingMonitor, T, samples, shed

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "concentrator.yaml"


def recorded(tmp_path: Path, misbehave: str = "reconnect") -> str:
    m = SheddingMonitor(CONFIG, T - 3)
    shed(m, misbehave)
    m.tick(T + 20)
    tmp_path.mkdir(exist_ok=True)
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


def interrupted_shedding(m: SheddingMonitor, t0: float) -> None:
    """A shedding that does everything right, but the monitor lost copies in the middle."""
    samples(m, 101, "a", t0 - 1, 900, 400)
    m.bmi_asdu(breaker_command(101, False), t0)
    m.site_asdu("a", double_point(101, 2001, False, t0 + 0.12), t0 + 0.122)
    m.site_asdu("a", single_point(101, 2002, True, t0 + 0.13), t0 + 0.132)
    m.interrupted(Interruption(t0 + 5, t0 + 6, "monitor restarted at X; copies from Y to Z lost", None))
    for k in range(1, 4):
        samples(m, 101, "a", t0 + 4 * k - 1, 505, 0)
    m.bmi_asdu(release_command(101), t0 + 12.5)


def test_json_gives_the_verdicts_of_the_text(tmp_path: Path) -> None:
    db = recorded(tmp_path)
    m = SheddingMonitor(CONFIG, T + 97)
    m.next_event_id = 2
    interrupted_shedding(m, T + 100)
    record = ShedRecord(db)
    record.write(m.take_records())
    record.close()

    text, judged = report(db, since=None, event_id=None, html_dir=None)
    as_json, judged_too = report(db, since=None, event_id=None, html_dir=None, as_json=True)
    assert not judged and not judged_too
    from_text: list[tuple[int, str, list[str]]] = []
    event = 0
    for line in text.splitlines():
        if line.startswith("event "):
            event = int(line.split()[1].rstrip(":"))
        elif line.startswith("  a: "):
            from_text.append((event, line[5:].split("  ")[0].split(":")[0], []))
        elif line.startswith("    "):
            from_text[-1][2].append(line.strip().split(":")[0])
    from_json = [(e["id"], Status(v["status"]).label, [f["reason"] for f in v["failures"]])
                 for e in json.loads(as_json)["events"] for v in e["verdicts"]]  # fmt: skip
    assert from_text == from_json == [(1, "FAIL", ["power_above_band"]), (2, "NOT JUDGED", [])]


def test_the_report_exits_non_zero_when_a_verdict_is_not_judged(tmp_path: Path, capsys: CaptureFixture[str]) -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    interrupted_shedding(m, T)
    record = ShedRecord(str(tmp_path / "r.sqlite"))
    record.write(m.take_records())
    record.close()
    assert main(["--db", str(tmp_path / "r.sqlite")], shedding_sources) == NOT_JUDGED_EXIT
    out = capsys.readouterr().out
    assert "  a: NOT JUDGED: monitor restarted at X; copies from Y to Z lost  P0 900.0 kW" in out
    assert "aggregate: NOT JUDGED (not judged: a)" in out
    # judged: a FAIL is not an error of the report
    assert main(["--db", recorded(tmp_path / "other")], shedding_sources) == 0


def test_the_page_has_a_legend_and_says_which_samples_were_invalid(tmp_path: Path) -> None:
    db = recorded(tmp_path, "iv")
    report(db, since=None, event_id=None, html_dir=str(tmp_path))
    page = (tmp_path / "shedding-event-1.html").read_text()
    assert "drawn at the samples judged: those taken after the command plus the opening time allowed" in page
    svgs = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.S)]
    ns = "{http://www.w3.org/2000/svg}"
    for svg in svgs:
        legend = svg.find(f"{ns}g[@class='legend']")
        assert legend is not None
        assert [t.text for t in legend.findall(f"{ns}text")] == [
            "Pi (credited total power)", "limit P0 - Pd + 5 % Pc, judged samples", "missing or invalid: counted 0",
            "copies may have been lost", "start, release", "judged from"]  # fmt: skip
    tips = [t.text or "" for t in svgs[1].iter(f"{ns}title")]
    invalid = [t for t in tips if "invalid (IV)" in t]
    assert len(invalid) == 1 and invalid[0].endswith("Pi 0.0 kW; invalid (IV): raw 505.0 kW, counted as 0 kW (5.3)")
    assert any(t.endswith("; valid") for t in tips)


def test_the_configuration_gives_the_report_its_record_and_the_register(
    tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    # The wiring layer (cli.shedding_sources) reads the file for the report: the shedding
    # section's record, and the incident register's word when there is an incidents: section.
    db = recorded(tmp_path / "record")
    document = yaml.safe_load(EXAMPLE.read_text())
    document["shedding"]["database"] = db
    document["incidents"]["database"] = str(tmp_path / "incidents.sqlite")
    with_register = tmp_path / "with.yaml"
    with_register.write_text(yaml.safe_dump(document))
    given = shedding_sources(str(with_register))
    assert given.shedding is not None and given.shedding.database == db
    assert given.register == RegisterWord(str(tmp_path / "incidents.sqlite"))
    del document["incidents"]
    without = tmp_path / "without.yaml"
    without.write_text(yaml.safe_dump(document))
    assert shedding_sources(str(without)).register is None
    assert main(["--config", str(with_register)], shedding_sources) == 0
    assert capsys.readouterr().out == report(db, since=None, event_id=None, html_dir=None)[0]
