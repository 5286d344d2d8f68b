"""The local record (annex A40 5.6: 4-second samples kept at least 60 days): SQLite.

One writer (the monitor process), one transaction per batch; readers (`concentrator
shedding report`) open the file read-only at any time. WAL journal with
synchronous=NORMAL: a killed process or a power cut loses at most the last batches, never
the file's integrity (SQLite's WAL guarantee); `integrity()` runs PRAGMA integrity_check.

Size: a sample row is (site id, time in ms, raw total, raw load sum, flags, skew in µs),
clustered on (site, time) with no other index (WITHOUT ROWID); the credited values are
derived from raw value and flags in the `credited` view, so they cost no space.
bench/SHEDDING.md has the figures for 100 sites x 60 days.

PostgreSQL: the schema is plain SQL (REAL -> double precision, INTEGER -> bigint, the
view as is); docs/shedding.md describes the path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .monitor import AggregateRow, ChangeRow, EventRow, Record, SampleRow, VerdictRow
from .verdict import Sample

SCHEMA_VERSION = 1
DAY = 86_400.0
# flags of a sample row
TOTAL_PRESENT, TOTAL_VALID, LOADS_PRESENT, LOADS_VALID = 1, 2, 4, 8
BREAKER_KNOWN, BREAKER_CLOSED, GRID_KNOWN, GRID_CONNECTED = 16, 32, 64, 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS samples (
    site INTEGER NOT NULL, at_ms INTEGER NOT NULL, total REAL, loads REAL, flags INTEGER NOT NULL, skew_us INTEGER,
    PRIMARY KEY (site, at_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    site INTEGER NOT NULL, received_ms INTEGER NOT NULL, ioa INTEGER NOT NULL, point TEXT NOT NULL,
    tagged_ms INTEGER, state INTEGER, valid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_site_time ON changes (site, received_ms);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, start REAL NOT NULL, end REAL, trigger TEXT NOT NULL, sites TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    event_id INTEGER NOT NULL, site TEXT NOT NULL, passed INTEGER NOT NULL, final INTEGER NOT NULL,
    reasons TEXT NOT NULL, details TEXT NOT NULL, p0 REAL, pd REAL, limit_kw REAL, opening_time REAL,
    judged_from REAL, PRIMARY KEY (event_id, site));
CREATE VIEW IF NOT EXISTS credited AS
    SELECT sites.name AS site, at_ms / 1000.0 AS at, total, flags & 2 = 2 AS total_valid, loads,
           flags & 8 = 8 AS loads_valid,
           CASE WHEN flags & 3 = 3 THEN total ELSE 0 END AS pi,
           CASE WHEN flags & 12 = 12 AND flags & 192 != 64 THEN loads ELSE 0 END AS credited_load,
           CASE WHEN flags & 16 THEN flags & 32 = 32 END AS breaker_closed, skew_us / 1e6 AS skew
    FROM samples JOIN sites ON sites.id = samples.site;
"""


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


def _flags(row: SampleRow) -> int:
    s = row.sample
    flags = (TOTAL_PRESENT if s.total is not None else 0) | (TOTAL_VALID if s.total_valid else 0)
    flags |= (LOADS_PRESENT if s.loads is not None else 0) | (LOADS_VALID if s.loads_valid else 0)
    if row.breaker_closed is not None:
        flags |= BREAKER_KNOWN | (BREAKER_CLOSED if row.breaker_closed else 0)
    if s.grid_connected is not None:
        flags |= GRID_KNOWN | (GRID_CONNECTED if s.grid_connected else 0)
    return flags


class ShedRecord:
    """The writer. Not thread-safe: one per process, one process per database."""

    def __init__(self, path: str, retention_days: int = 60) -> None:
        self.path = path
        self.retention = retention_days * DAY
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._site_ids = dict(self.db.execute("SELECT name, id FROM sites").fetchall())

    def close(self) -> None:
        self.db.close()

    def _site(self, name: str) -> int:
        site_id = self._site_ids.get(name)
        if site_id is None:
            site_id = self.db.execute("INSERT INTO sites (name) VALUES (?)", (name,)).lastrowid
            assert site_id is not None
            self._site_ids[name] = site_id
        return site_id

    def next_event_id(self) -> int:
        (last,) = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(last) + 1

    def write(self, records: Iterable[Record]) -> int:
        """Everything in one transaction; returns the number of rows written."""
        samples: list[tuple[object, ...]] = []
        changes: list[tuple[object, ...]] = []
        events: list[tuple[object, ...]] = []
        verdicts: list[tuple[object, ...]] = []
        for r in records:
            if isinstance(r, SampleRow):
                s = r.sample
                skew = None if r.skew is None else round(r.skew * 1e6)
                samples.append((self._site(r.site), _ms(s.at), s.total, s.loads, _flags(r), skew))
            elif isinstance(r, ChangeRow):
                c = r.change
                state = None if c.state is None else int(c.state)
                changes.append((self._site(r.site), _ms(c.received), r.ioa, r.point, _ms(c.tagged), state,
                                int(c.valid)))  # fmt: skip
            elif isinstance(r, EventRow):
                events.append((r.event_id, r.start, r.end, r.trigger, json.dumps(list(r.sites))))
            elif isinstance(r, VerdictRow):
                v = r.verdict
                reasons = json.dumps([str(x) for x in v.reasons])
                details = json.dumps([{"reason": str(f.reason), "detail": f.detail, "at": f.at} for f in v.failures])
                verdicts.append((r.event_id, v.site, int(v.passed), int(v.final), reasons, details, v.p0, v.pd,
                                 v.limit_kw, v.opening_time, v.judged_from))  # fmt: skip
            elif isinstance(r, AggregateRow):
                verdicts.append((r.event_id, "*", int(r.passed), int(r.final), json.dumps(list(r.failed_sites)),
                                 "[]", None, None, None, None, None))  # fmt: skip
        db = self.db
        db.execute("BEGIN")
        try:
            # A restart may close the same slot again (the monitor starts at the next
            # slot, but the clock may have been set back): the first value stays.
            db.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)", samples)
            db.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", changes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)", events)
            db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", verdicts)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(samples) + len(changes) + len(events) + len(verdicts)

    def prune(self, now: float) -> int:
        """Delete what is older than the retention, site by site (each a short
        transaction, along the clustered key). Events go with their samples."""
        cutoff = _ms(now - self.retention)
        deleted = 0
        for site_id in list(self._site_ids.values()):
            with self.db:
                deleted += self.db.execute("DELETE FROM samples WHERE site = ? AND at_ms < ?",
                                           (site_id, cutoff)).rowcount  # fmt: skip
                deleted += self.db.execute("DELETE FROM changes WHERE site = ? AND received_ms < ?",
                                           (site_id, cutoff)).rowcount  # fmt: skip
        with self.db:
            old = [row[0] for row in self.db.execute("SELECT id FROM events WHERE end < ?", (now - self.retention,))]
            self.db.executemany("DELETE FROM verdicts WHERE event_id = ?", [(i,) for i in old])
            self.db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in old])
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_prune', ?)", (str(now),))
        return deleted + len(old)


# --------------------------------------------------------------------------- reading


def open_read_only(path: str) -> sqlite3.Connection:
    """A reader beside the running writer (WAL lets both run)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def integrity(path: str) -> str:
    """PRAGMA integrity_check: 'ok' or the problems found."""
    db = sqlite3.connect(path)
    try:
        return "\n".join(row[0] for row in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


@dataclass(frozen=True)
class StoredEvent:
    id: int
    start: float
    end: float | None
    trigger: str
    sites: tuple[str, ...]


def events(db: sqlite3.Connection, since: float | None = None, event_id: int | None = None) -> list[StoredEvent]:
    query, args = "SELECT id, start, end, trigger, sites FROM events WHERE 1", []
    if since is not None:
        query += " AND coalesce(end, 1e18) >= ?"
        args.append(since)
    if event_id is not None:
        query += " AND id = ?"
        args.append(event_id)
    rows = db.execute(query + " ORDER BY id", args).fetchall()
    return [StoredEvent(r[0], r[1], r[2], r[3], tuple(json.loads(r[4]))) for r in rows]


def verdicts(db: sqlite3.Connection, event_id: int) -> list[sqlite3.Row]:
    return db.execute("SELECT * FROM verdicts WHERE event_id = ? ORDER BY site = '*', site", (event_id,)).fetchall()


def samples(db: sqlite3.Connection, sites: Sequence[str], start: float, end: float) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {name: [] for name in sites}
    for name in sites:
        rows = db.execute(
            "SELECT at_ms, total, loads, flags FROM samples JOIN sites ON sites.id = samples.site "
            "WHERE sites.name = ? AND at_ms BETWEEN ? AND ? ORDER BY at_ms",
            (name, _ms(start), _ms(end)),
        )
        for at_ms, total, loads, flags in rows:
            grid = None if not flags & GRID_KNOWN else bool(flags & GRID_CONNECTED)
            out[name].append(Sample(at_ms / 1000, total, bool(flags & TOTAL_VALID), loads, bool(flags & LOADS_VALID),
                                    grid))  # fmt: skip
    return out
