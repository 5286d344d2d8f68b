"""The incident register's word on a shedding (annex A40 5.7.3, 5.2), for the shedding
report: a function of the register only. The wiring layer (concentrator/cli.py) hands
`RegisterWord` to the report, so that the shedding package imports nothing of the incidents.

- During an unavailability notified beforehand (the SMTP relay accepted its opening or
  planned notice before the shedding began) the site's sheddings are not valid:
  "not creditable (notified unavailability, incident N)".
- A shedding that failed while an incident of the site (or of the BMI link) was under
  way and not notified beforehand counts as failed: "failed, unavailability not
  notified (incident N)".
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from .detector import BMI, Kind
from .notices import when
from .store import Incident, Register


def _overlapping(register: Register, site: str, start: float, end: float) -> list[Incident]:
    found = register.incidents(site=site) + [i for i in register.incidents(site=BMI) if i.kind is Kind.BMI_LINK]
    return sorted((i for i in found if i.start <= end and (i.end is None or i.end >= start)), key=lambda i: i.start)


def _open(database: str | None) -> Register | None:
    if database is None or not os.path.exists(database):
        return None
    try:
        return Register(database, read_only=True)
    except sqlite3.Error:
        return None


def shedding_note(database: str | None, site: str, start: float, end: float | None, passed: bool) -> str | None:
    """What the register says of a shedding of `site` from `start` to `end` (None: going on)."""
    register = _open(database)
    if register is None:
        return None
    try:
        overlapping = _overlapping(register, site, start, time.time() if end is None else end)
        for incident in overlapping:
            notified = register.notified_at(incident.id)
            if notified is not None and notified <= start:
                return f"not creditable (notified unavailability, incident {incident.id})"
        if not passed and overlapping:
            return f"failed, unavailability not notified (incident {overlapping[0].id})"
        return None
    finally:
        register.close()


def incidents_beside(database: str | None, sites: tuple[str, ...], start: float, end: float | None) -> list[str]:
    """One line per incident of these sites (or of the BMI link) overlapping the shedding."""
    register = _open(database)
    if register is None:
        return []
    try:
        stop = time.time() if end is None else end
        found = {i.id: i for site in sites for i in _overlapping(register, site, start, stop)}
        lines = []
        for i in sorted(found.values(), key=lambda i: i.id):
            notified = register.notified_at(i.id)
            state = f"notified {when(notified)}" if notified is not None else "not notified"
            lines.append(f"incident {i.id}: {i.site} {i.kind} {when(i.start)} .. {when(i.end)}, {state}")
        return lines
    finally:
        register.close()


@dataclass(frozen=True)
class RegisterWord:
    """The register at `database`, as the shedding report asks it (shedding/report.py)."""

    database: str

    def note(self, site: str, start: float, end: float | None, passed: bool) -> str | None:
        return shedding_note(self.database, site, start, end, passed)

    def beside(self, sites: tuple[str, ...], start: float, end: float | None) -> list[str]:
        return incidents_beside(self.database, sites, start, end)
