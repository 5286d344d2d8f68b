"""The register's writer and readers without the process: notices' fields in both
languages, planned maintenance (10 days ahead unless the operator asked), the tie to
the shedding verdicts, the command line."""

from __future__ import annotations

import email
import email.message
import email.policy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from concentrator.incidents.detector import BMI, Kind, Opened, Restored
from concentrator.incidents.registrar import Refused, Registrar
from concentrator.incidents.store import Register
from concentrator.incidents.verdicts import incidents_beside, shedding_note

from .conftest import incidents_config

DAY = 86_400.0
T = 1_795_777_200.0  # Friday 27 November 2026, 12:00 in Rome


def parse(path: Path) -> email.message.EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def registrar(tmp_path: Path) -> Registrar:
    config = incidents_config(str(tmp_path), holder="Acme S.p.A.", sites={"north": {"updc": "RTU north"}})
    return Registrar(config, Register(config.database))


def test_opening_and_closing_notices_carry_the_fields_of_5_7_1(tmp_path: Path) -> None:
    r = registrar(tmp_path)
    incident_id = r.opened(Opened("north", Kind.UNREACHABLE, T, T + 20, ("12:00:00 primary and backup links down",)), T)
    opening = (tmp_path / "spool" / "incident-00001-opening.txt").read_text()
    for field in ("Sito interrompibile: north", "Apparato UPDC: RTU north", "Inizio dell'indisponibilità: 27/11/2026",
                  "Interruptible site: north", "UPDC: RTU north", "Unavailable since: 27/11/2026",
                  "Ripristino completo entro: 02/12/2026 24:00 (CET)", "-- Acme S.p.A."):  # fmt: skip
        assert field in opening, field
    r.restored(Restored("north", Kind.UNREACHABLE, T + 600, "collegamenti giù", "links down"), T + 610)
    other = r.opened(Opened("south", Kind.RESTART, T, T, ()), T)
    with pytest.raises(Refused, match="still open"):  # its UPDC is not back yet
        r.close(other, "x", T)
    r.close(incident_id, None, T + 700)
    closing = (tmp_path / "spool" / "incident-00001-closing.txt").read_text()
    assert "Fine dell'indisponibilità: 27/11/2026" in closing and "Unavailable until: 27/11/2026" in closing
    assert "Tipo e causa dell'evento: UPDC non raggiungibile (anomalia nel colloquio)\n    collegamenti giù" in closing
    assert "Type and cause: UPDC unreachable (anomaly in its exchange)\n    links down" in closing
    eml = parse(tmp_path / "spool" / "incident-00001-closing.eml")
    assert eml["Subject"].startswith("Fine indisponibilità UPDC / UPDC restored: north")
    with pytest.raises(Refused, match="already closed"):
        r.close(incident_id, "again", T + 800)


def test_automatic_closing_writes_the_closing_notice_with_the_proposed_cause(tmp_path: Path) -> None:
    config = incidents_config(str(tmp_path), closing="automatic")
    r = Registrar(config, Register(config.database))
    incident_id = r.opened(Opened("north", Kind.RESTART, T, T, ()), T)
    r.restored(Restored("north", Kind.RESTART, T + 30, "riavvio dell'UPDC", "UPDC restart"), T + 40)
    incident = r.register.get(incident_id)
    assert incident is not None and incident.state == "closed"
    closing = (tmp_path / "spool" / "incident-00001-closing.txt").read_text()
    assert "riavvio dell'UPDC (anomalia dell'apparato)\n    riavvio dell'UPDC" in closing
    assert "UPDC restart (anomaly of the apparatus)\n    UPDC restart" in closing


def test_maintenance_under_10_days_ahead_is_refused_unless_the_operator_asked(tmp_path: Path) -> None:
    r = registrar(tmp_path)
    with pytest.raises(Refused, match="9.9 days ahead.*at least 10 calendar days"):
        r.plan("north", T + 9.9 * DAY, T + 10 * DAY, "firmware update", T, requested_by_operator=False,
               config_change=None)  # fmt: skip
    assert r.register.incidents() == []
    change = tmp_path / "updc-config.xml"
    change.write_text("<config version='7'/>")
    first = r.plan("north", T + 10.5 * DAY, T + 10.6 * DAY, "firmware update", T, requested_by_operator=False,
                   config_change=str(change))  # fmt: skip
    second = r.plan("north", T + 2 * DAY, T + 2.1 * DAY, "sostituzione richiesta da Terna", T,
                    requested_by_operator=True, config_change=None)  # fmt: skip
    assert [i.kind for i in r.register.incidents()] == [Kind.MAINTENANCE, Kind.MAINTENANCE]
    planned = parse(tmp_path / "spool" / f"incident-{first:05d}-planned.eml")
    parts = list(planned.iter_attachments())
    assert [p.get_filename() for p in parts] == ["updc-config.xml"]
    text = (tmp_path / "spool" / f"incident-{second:05d}-planned.txt").read_text()
    assert "Intervento richiesto da Terna" in text and "vii.  Fine dell'indisponibilità" in text
    assert r.register.maintenance_windows() == [("north", T + 10.5 * DAY, T + 10.6 * DAY),
                                                ("north", T + 2 * DAY, T + 2.1 * DAY)]  # fmt: skip
    with pytest.raises(Refused, match="no site west"):
        r.plan("west", T + 20 * DAY, T + 21 * DAY, "x", T, requested_by_operator=False, config_change=None)


def test_the_shedding_verdict_knows_notified_and_unnotified_unavailability(tmp_path: Path) -> None:
    r = registrar(tmp_path)
    database = r.config.database
    incident = r.opened(Opened("north", Kind.UNREACHABLE, T + 100, T + 120, ()), T + 120)
    (notice,) = r.register.unsent()
    r.sent(notice, T + 150)
    r.restored(Restored("north", Kind.UNREACHABLE, T + 200, "", ""), T + 210)
    # A shedding after the notice was accepted: not creditable.
    assert shedding_note(database, "north", T + 160, T + 170, False) == \
        f"not creditable (notified unavailability, incident {incident})"  # fmt: skip
    assert shedding_note(database, "north", T + 160, T + 170, True) == \
        f"not creditable (notified unavailability, incident {incident})"  # fmt: skip
    # A shedding that failed while it was under way and not yet notified: failed.
    assert shedding_note(database, "north", T + 110, T + 130, False) == \
        f"failed, unavailability not notified (incident {incident})"  # fmt: skip
    assert shedding_note(database, "north", T + 110, T + 130, True) is None
    assert shedding_note(database, "north", T + 300, T + 310, False) is None  # after its end
    assert shedding_note(database, "south", T + 160, T + 170, False) is None  # another site
    # A BMI link incident concerns every site.
    bmi = r.opened(Opened(BMI, Kind.BMI_LINK, T + 400, T + 420, ()), T + 420)
    assert shedding_note(database, "south", T + 430, T + 440, False) == \
        f"failed, unavailability not notified (incident {bmi})"  # fmt: skip
    # Planned maintenance whose notice the relay accepted: not creditable.
    planned = r.plan("south", T + 11 * DAY, T + 11.1 * DAY, "x", T, requested_by_operator=False, config_change=None)
    (notice,) = [n for n in r.register.unsent() if n.incident == planned]
    r.sent(notice, T + 1)
    assert shedding_note(database, "south", T + 11.05 * DAY, T + 11.06 * DAY, True) == \
        f"not creditable (notified unavailability, incident {planned})"  # fmt: skip
    assert incidents_beside(database, ("north",), T + 110, T + 130)[0].startswith(f"incident {incident}: north")
    assert shedding_note(str(tmp_path / "absent.sqlite"), "north", T, T + 1, False) is None


def test_the_command_line_plans_lists_shows_and_refuses(tmp_path: Path) -> None:
    doc = {
        "uplink": {"listen": "127.0.0.1:12404", "allowed_peers": ["127.0.0.1"]},
        "sites": [{"name": "north", "common_addresses": [101], "endpoints": ["127.0.0.1:2404"],
                   "interruptibility": "instantaneous"}],
        "metrics": {"listen": "127.0.0.1:19104"},
        "incidents": {"database": str(tmp_path / "incidents.sqlite"), "spool": str(tmp_path / "spool")},
    }  # fmt: skip
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(doc))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "concentrator", *args], capture_output=True, text=True, timeout=60)

    soon = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 3 * DAY))
    later = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 3 * DAY + 7200))
    refused = run("maintenance", "--config", str(conf), "plan", "--site", "north", "--start", soon, "--end", later,
                  "--cause", "cambio batterie")  # fmt: skip
    assert refused.returncode == 1 and "at least 10 calendar days" in refused.stderr
    planned = run("maintenance", "--config", str(conf), "plan", "--site", "north", "--start", soon, "--end", later,
                  "--cause", "cambio batterie", "--requested-by-operator")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    listed = run("incidents", "--config", str(conf), "list", "--json")
    assert listed.returncode == 0
    (entry,) = yaml.safe_load(listed.stdout)
    assert entry["kind"] == "maintenance" and entry["requested_by_operator"] is True
    shown = run("incidents", "--config", str(conf), "show", "1")
    assert "notice    planned: incident-00001-planned.eml, NOT SENT" in shown.stdout
    bad = run("incidents", "--config", str(conf), "close", "1", "--cause", "x")
    assert bad.returncode == 1 and "planned maintenance" in bad.stderr
    bad = run("incidents", "--config", str(conf), "close", "1", "--cause", "x", "--json")
    assert bad.returncode == 1 and yaml.safe_load(bad.stdout)["ok"] is False
    page = run("incidents", "--config", str(conf), "report", "--html", str(tmp_path / "html"))
    assert page.returncode == 0, page.stderr
    text = (tmp_path / "html" / "incidents.html").read_text()
    assert text.count("<svg") == 1 and text.count("<tr>") == 2 and "cambio batterie" in text and "planned" in text
