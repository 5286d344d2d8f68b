"""The incident register: SQLite, WAL, synchronous=FULL (an incident or a notice's state
committed is on disk: a `kill -9` or a power cut loses nothing committed).

One writer: whoever holds the register's lock file (`WriterLock`): the incident
process while the relay runs; otherwise the `concentrator incidents` / `maintenance`
command itself. Readers open the file read-only at any time (WAL lets them).

An incident is open (no end), restored (end known, closing notice not yet written:
waiting for the holder to confirm the type and cause) or closed. Each notice is a row
with the name of its files in the spool and whether the SMTP relay accepted it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass

from .detector import Kind
from .workdays import deadline

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, updc TEXT NOT NULL, kind TEXT NOT NULL,
    start REAL NOT NULL, end REAL, detected REAL NOT NULL, deadline REAL, evidence TEXT NOT NULL,
    proposed_it TEXT, proposed_en TEXT, cause TEXT, closed REAL, requested_by_operator INTEGER NOT NULL DEFAULT 0,
    config_change TEXT);
CREATE INDEX IF NOT EXISTS incidents_site ON incidents (site, start);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident INTEGER NOT NULL REFERENCES incidents (id), kind TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE, created REAL NOT NULL, sent REAL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, next_attempt REAL NOT NULL);
"""


@dataclass(frozen=True)
class Incident:
    id: int
    site: str
    updc: str
    kind: Kind
    start: float
    end: float | None
    detected: float
    deadline: float | None
    evidence: tuple[str, ...]
    proposed_it: str | None
    proposed_en: str | None
    cause: str | None
    closed: float | None
    requested_by_operator: bool
    config_change: str | None

    @property
    def state(self) -> str:
        if self.kind is Kind.MAINTENANCE:
            return "planned"
        if self.closed is not None:
            return "closed"
        return "open" if self.end is None else "restored"

    def to_json(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kind"], d["evidence"], d["state"] = str(self.kind), list(self.evidence), self.state
        return d


@dataclass(frozen=True)
class Notice:
    id: int
    incident: int
    kind: str  # opening, closing, planned
    name: str
    created: float
    sent: float | None
    attempts: int
    last_error: str | None
    next_attempt: float


class WriterLock:
    """The register's single-writer lock (flock on `<database>.lock`)."""

    def __init__(self, database: str) -> None:
        self.fd = os.open(database + ".lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, blocking: bool = True) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


def _incident(row: sqlite3.Row) -> Incident:
    return Incident(row["id"], row["site"], row["updc"], Kind(row["kind"]), row["start"], row["end"], row["detected"],
                    row["deadline"], tuple(json.loads(row["evidence"])), row["proposed_it"], row["proposed_en"],
                    row["cause"], row["closed"], bool(row["requested_by_operator"]), row["config_change"])  # fmt: skip


def _notice(row: sqlite3.Row) -> Notice:
    return Notice(row["id"], row["incident"], row["kind"], row["name"], row["created"], row["sent"], row["attempts"],
                  row["last_error"], row["next_attempt"])  # fmt: skip


class Register:
    """Reads always; writes only by the holder of the `WriterLock`."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ writes
    def open_incident(self, site: str, updc: str, kind: Kind, start: float, detected: float,
                      evidence: tuple[str, ...]) -> int:  # fmt: skip
        cursor = self.db.execute(
            "INSERT INTO incidents (site, updc, kind, start, detected, deadline, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (site, updc, str(kind), start, detected, deadline(start), json.dumps(list(evidence))),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def restore(self, incident_id: int, end: float, proposed_it: str, proposed_en: str) -> None:
        self.db.execute("UPDATE incidents SET end = ?, proposed_it = ?, proposed_en = ? WHERE id = ? AND end IS NULL",
                        (end, proposed_it, proposed_en, incident_id))  # fmt: skip

    def close_incident(self, incident_id: int, cause: str, now: float) -> None:
        self.db.execute("UPDATE incidents SET cause = ?, closed = ? WHERE id = ?", (cause, now, incident_id))

    def plan_maintenance(self, site: str, updc: str, start: float, end: float, cause: str, now: float, *,
                         requested_by_operator: bool, config_change: str | None) -> int:  # fmt: skip
        cursor = self.db.execute(
            "INSERT INTO incidents (site, updc, kind, start, end, detected, evidence, proposed_it, proposed_en, cause, "
            "requested_by_operator, config_change) VALUES (?, ?, 'maintenance', ?, ?, ?, '[]', ?, ?, ?, ?, ?)",
            (site, updc, start, end, now, cause, cause, cause, int(requested_by_operator), config_change),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def add_notice(self, incident_id: int, kind: str, name: str, now: float) -> int:
        cursor = self.db.execute(
            "INSERT INTO notices (incident, kind, name, created, next_attempt) VALUES (?, ?, ?, ?, ?)",
            (incident_id, kind, name, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def notice_sent(self, notice_id: int, now: float) -> None:
        self.db.execute("UPDATE notices SET sent = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                        (now, notice_id))  # fmt: skip

    def notice_failed(self, notice_id: int, error: str, next_attempt: float) -> None:
        self.db.execute("UPDATE notices SET attempts = attempts + 1, last_error = ?, next_attempt = ? WHERE id = ?",
                        (error[:500], next_attempt, notice_id))  # fmt: skip

    # ------------------------------------------------------------------ reads
    def get(self, incident_id: int) -> Incident | None:
        row = self.db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else _incident(row)

    def start(self, incident_id: int) -> float:
        (start,) = self.db.execute("SELECT start FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return float(start)

    def incidents(self, *, since: float | None = None, site: str | None = None) -> list[Incident]:
        query, args = "SELECT * FROM incidents WHERE 1", list[object]()
        if since is not None:
            query += " AND coalesce(end, 1e18) >= ?"
            args.append(since)
        if site is not None:
            query += " AND site = ?"
            args.append(site)
        return [_incident(r) for r in self.db.execute(query + " ORDER BY id", args)]

    def open_detected(self) -> dict[tuple[str, Kind], int]:
        """(site, kind) -> id of the detected incidents still open (no end)."""
        rows = self.db.execute("SELECT id, site, kind FROM incidents WHERE end IS NULL AND kind != 'maintenance'")
        return {(r["site"], Kind(r["kind"])): r["id"] for r in rows}

    def maintenance_windows(self) -> list[tuple[str, float, float]]:
        rows = self.db.execute("SELECT site, start, end FROM incidents WHERE kind = 'maintenance'")
        return [(r["site"], r["start"], r["end"]) for r in rows]

    def notices(self, incident_id: int | None = None) -> list[Notice]:
        if incident_id is None:
            return [_notice(r) for r in self.db.execute("SELECT * FROM notices ORDER BY id")]
        rows = self.db.execute("SELECT * FROM notices WHERE incident = ? ORDER BY id", (incident_id,))
        return [_notice(r) for r in rows]

    def unsent(self) -> list[Notice]:
        return [_notice(r) for r in self.db.execute("SELECT * FROM notices WHERE sent IS NULL ORDER BY id")]

    def notified_at(self, incident_id: int) -> float | None:
        """When the SMTP relay accepted the incident's opening (or planned) notice."""
        row = self.db.execute("SELECT min(sent) FROM notices WHERE incident = ? AND kind IN ('opening', 'planned')",
                              (incident_id,)).fetchone()  # fmt: skip
        return None if row is None else row[0]
