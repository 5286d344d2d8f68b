"""The local record (annex A40 5.6: 4-second samples kept at least 60 days): SQLite.

One writer (the monitor process), one transaction per batch; readers (`concentrator
shedding report`) open the file read-only at any time. WAL journal with
synchronous=NORMAL: a killed process or a power cut loses at most the last batches, never
the file's integrity (SQLite's WAL guarantee); `integrity()` runs PRAGMA integrity_check.

Size: a sample row is (site id, time in ms, raw total, raw load sum, flags, skew in µs,
age in ms of its oldest value: when the sample was taken),
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

from .config import SheddingConfig
from .monitor import (
    MAX_AGE_PERIODS,
    AggregateRow,
    ChangeRow,
    Event,
    EventRow,
    EventSiteRow,
    InterruptionRow,
    Record,
    Resume,
    SampleRow,
    VerdictRow,
)
from .verdict import Change, Interruption, Sample, SiteEvidence, utc

SCHEMA_VERSION = 2
DAY = 86_400.0
# flags of a sample row
TOTAL_PRESENT, TOTAL_VALID, LOADS_PRESENT, LOADS_VALID = 1, 2, 4, 8
BREAKER_KNOWN, BREAKER_CLOSED, GRID_KNOWN, GRID_CONNECTED = 16, 32, 64, 128
INCOMPLETE = 256  # copies of this slot's window may have been lost: see `interruptions`

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS samples (
    site INTEGER NOT NULL, at_ms INTEGER NOT NULL, total REAL, loads REAL, flags INTEGER NOT NULL, skew_us INTEGER,
    age_ms INTEGER, PRIMARY KEY (site, at_ms)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    site INTEGER NOT NULL, received_ms INTEGER NOT NULL, ioa INTEGER NOT NULL, point TEXT NOT NULL,
    tagged_ms INTEGER, state INTEGER, valid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_site_time ON changes (site, received_ms);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, start REAL NOT NULL, end REAL, trigger TEXT NOT NULL, sites TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    event_id INTEGER NOT NULL, site TEXT NOT NULL, passed INTEGER NOT NULL, final INTEGER NOT NULL,
    reasons TEXT NOT NULL, details TEXT NOT NULL, p0 REAL, pd REAL, limit_kw REAL, opening_time REAL,
    judged_from REAL, status TEXT, note TEXT, PRIMARY KEY (event_id, site));
CREATE TABLE IF NOT EXISTS event_sites (
    event_id INTEGER NOT NULL, site TEXT NOT NULL, joined REAL NOT NULL, start REAL NOT NULL, command_at REAL,
    release_at REAL, before_at REAL, before_total REAL, before_loads REAL, before_flags INTEGER,
    before_taken REAL, locked_at_start INTEGER NOT NULL, worst_skew REAL, PRIMARY KEY (event_id, site));
CREATE TABLE IF NOT EXISTS interruptions (
    start REAL NOT NULL, end REAL NOT NULL, cause TEXT NOT NULL, lost INTEGER, PRIMARY KEY (start, cause));
CREATE VIEW IF NOT EXISTS credited AS
    SELECT sites.name AS site, at_ms / 1000.0 AS at, total, flags & 2 = 2 AS total_valid, loads,
           flags & 8 = 8 AS loads_valid,
           CASE WHEN flags & 3 = 3 THEN total ELSE 0 END AS pi,
           CASE WHEN flags & 12 = 12 AND flags & 192 != 64 THEN loads ELSE 0 END AS credited_load,
           CASE WHEN flags & 16 THEN flags & 32 = 32 END AS breaker_closed, skew_us / 1e6 AS skew,
           flags & 256 = 0 AS complete
    FROM samples JOIN sites ON sites.id = samples.site;
"""
# Columns added by schema 2 to a record written by schema 1 (the view is re-created).
_MIGRATE = (("samples", "age_ms", "INTEGER"), ("verdicts", "status", "TEXT"), ("verdicts", "note", "TEXT"))
_LATEST_CHANGE = (
    "SELECT point, received_ms, tagged_ms, state, valid FROM changes WHERE site = ? AND ioa = ? "
    "ORDER BY received_ms DESC LIMIT 1"
)
_META_RESUME = ("epoch", "seq", "seq_at", "next_slot")


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
    return flags | (0 if s.complete else INCOMPLETE)


def _sample_flags(s: Sample) -> int:
    return _flags(SampleRow("", s, None, None))


def _from_flags(at: float, total: float | None, loads: float | None, flags: int, taken: float | None) -> Sample:
    grid = None if not flags & GRID_KNOWN else bool(flags & GRID_CONNECTED)
    return Sample(at, total, bool(flags & TOTAL_VALID), loads, bool(flags & LOADS_VALID), grid, taken,
                  not flags & INCOMPLETE)  # fmt: skip


@dataclass(frozen=True)
class Applied:
    """The last copy whose effects are in the record (same transaction)."""

    epoch: str
    seq: int
    at: float  # its tap time
    next_slot: float


class ShedRecord:
    """The writer. Not thread-safe: one per process, one process per database."""

    def __init__(self, path: str, retention_days: int = 60) -> None:
        self.path = path
        self.retention = retention_days * DAY
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._site_ids = dict(self.db.execute("SELECT name, id FROM sites").fetchall())

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        for table, column, kind in _MIGRATE:
            columns = [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]
            if columns and column not in columns:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                self.db.execute("DROP VIEW IF EXISTS credited")

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

    def applied(self) -> Applied | None:
        values = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN (?, ?, ?, ?)", _META_RESUME))
        if len(values) < len(_META_RESUME):
            return None
        return Applied(values["epoch"], int(values["seq"]), float(values["seq_at"]), float(values["next_slot"]))

    def write(self, records: Iterable[Record], applied: Applied | None = None) -> tuple[int, int]:
        """Everything in one transaction, with the last copy applied; returns the number of
        rows written and of slot rows an interruption newly flagged incomplete."""
        samples: list[tuple[object, ...]] = []
        changes: list[tuple[object, ...]] = []
        events: list[tuple[object, ...]] = []
        verdicts: list[tuple[object, ...]] = []
        event_sites: list[tuple[object, ...]] = []
        interruptions: list[InterruptionRow] = []
        for r in records:
            if isinstance(r, SampleRow):
                s = r.sample
                skew = None if r.skew is None else round(r.skew * 1e6)
                # When the sample was taken, as its age at the slot's end: 2 octets, not 6.
                age = None if s.taken is None else round((s.at - s.taken) * 1000)
                samples.append((self._site(r.site), _ms(s.at), s.total, s.loads, _flags(r), skew, age))
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
                                 v.limit_kw, v.opening_time, v.judged_from, str(v.status), v.note))  # fmt: skip
            elif isinstance(r, AggregateRow):
                verdicts.append((r.event_id, "*", int(r.status == "pass"), int(r.final),
                                 json.dumps(list(r.failed_sites)), "[]", None, None, None, None, None, str(r.status),
                                 ""))  # fmt: skip
            elif isinstance(r, EventSiteRow):
                b = r.before
                before = (None,) * 5 if b is None else (b.at, b.total, b.loads, _sample_flags(b), b.taken)
                event_sites.append((r.event_id, r.site, r.joined, r.start, r.command_at, r.release_at, *before,
                                    int(r.locked_at_start), r.worst_skew))  # fmt: skip
            else:
                interruptions.append(r)
        db = self.db
        flagged = 0
        db.execute("BEGIN")
        try:
            # A restart closes again no slot it recorded (it resumes at the next one), but the
            # clock may have been set back: the first value stays.
            db.executemany("INSERT OR IGNORE INTO samples (site, at_ms, total, loads, flags, skew_us, age_ms) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", samples)  # fmt: skip
            db.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", changes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)", events)
            db.executemany("INSERT OR REPLACE INTO verdicts (event_id, site, passed, final, reasons, details, p0, pd, "
                           "limit_kw, opening_time, judged_from, status, note) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", verdicts)  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO event_sites VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           event_sites)  # fmt: skip
            for r in interruptions:
                i = r.interruption
                db.execute(
                    "INSERT OR REPLACE INTO interruptions VALUES (?, ?, ?, ?)", (i.start, i.end, i.cause, i.lost)
                )
                if i.lost != 0:  # slots already recorded whose look-back window meets the span
                    span = (_ms(i.start), _ms(i.end + MAX_AGE_PERIODS * r.period))
                    for site_id in self._site_ids.values():
                        flagged += db.execute(f"UPDATE samples SET flags = flags | {INCOMPLETE} WHERE site = ? AND "
                                              f"at_ms BETWEEN ? AND ? AND flags & {INCOMPLETE} = 0",
                                              (site_id, *span)).rowcount  # fmt: skip
            if applied is not None:
                values = (applied.epoch, str(applied.seq), repr(applied.at), repr(applied.next_slot))
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", zip(_META_RESUME, values, strict=True))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(samples) + len(changes) + len(events) + len(verdicts) + len(event_sites), flagged

    def resume(self, config: SheddingConfig, now: float) -> Resume | None:
        """Where the record ends, for a restarted monitor; None for a new record. A
        shedding left open that cannot be resumed is closed NOT JUDGED here."""
        applied = self.applied()
        if applied is not None:
            next_slot = applied.next_slot
        else:  # a record of schema 1: after its last slot (per site: along the key, no table scan)
            last = [self.db.execute("SELECT max(at_ms) FROM samples WHERE site = ?", (i,)).fetchone()[0]
                    for i in self._site_ids.values()]  # fmt: skip
            if not any(t is not None for t in last):
                return None
            next_slot = max(t for t in last if t is not None) / 1000 + config.sample_period
        signals: dict[str, list[tuple[str, int, Change]]] = {}
        for site in config.sites:
            site_id = self._site_ids.get(site.name)
            p = site.points
            for ioa in (*p.breakers, *(i for i in (p.lock, p.grid_connection) if i is not None)):
                # Backwards along (site, received_ms): stops at the point's latest change.
                row = self.db.execute(_LATEST_CHANGE, (site_id, ioa)).fetchone()
                if row is not None:
                    signals.setdefault(site.name, []).append((row[0], ioa, _change(*row[1:])))
        return Resume(next_slot, self.next_event_id(), signals, self._open_event(config, now))

    def _open_event(self, config: SheddingConfig, now: float) -> Event | None:
        rows = self.db.execute("SELECT id, start, trigger FROM events WHERE end IS NULL ORDER BY id DESC").fetchall()
        if not rows:
            return None
        event = self._event(config, *rows[0])
        for row in rows[1 if event is not None else 0 :]:
            self._abandon(row[0], now)
        return event

    def _abandon(self, event_id: int, now: float) -> None:
        """Close a shedding the monitor cannot resume (written before schema 2, or its sites
        are no longer configured): what it saw fail stays FAIL, the rest is NOT JUDGED."""
        note = f"monitor restarted at {utc(now)}; this shedding could not be resumed"
        with self.db:
            self.db.execute("UPDATE events SET end = ? WHERE id = ?", (now, event_id))
            self.db.execute("UPDATE verdicts SET final = 1, note = ?, status = 'not_judged' WHERE event_id = ? "
                            "AND site != '*' AND (passed OR status = 'not_judged')", (note, event_id))  # fmt: skip
            self.db.execute("UPDATE verdicts SET final = 1, status = 'fail' WHERE event_id = ? AND site != '*' "
                            "AND NOT passed AND status IS NOT 'not_judged'", (event_id,))  # fmt: skip
            failed = "EXISTS (SELECT 1 FROM verdicts v WHERE v.event_id = ? AND v.site != '*' AND v.status = 'fail')"
            aggregate = f"CASE WHEN {failed} THEN 'fail' ELSE 'not_judged' END"
            self.db.execute(f"UPDATE verdicts SET final = 1, status = {aggregate} WHERE event_id = ? AND site = '*'",
                            (event_id, event_id))  # fmt: skip
            self.db.execute("UPDATE verdicts SET passed = 0 WHERE event_id = ?", (event_id,))

    def _event(self, config: SheddingConfig, event_id: int, start: float, trigger: str) -> Event | None:
        event = Event(event_id, start, trigger)
        for (site, joined, start, command_at, release_at, before_at, before_total, before_loads, before_flags,
             before_taken, locked, worst) in self.db.execute(
                "SELECT site, joined, start, command_at, release_at, before_at, before_total, before_loads, "
                "before_flags, before_taken, locked_at_start, worst_skew FROM event_sites WHERE event_id = ? "
                "ORDER BY rowid", (event.event_id,)):  # fmt: skip
            shed = config.site(site)
            if shed is None:
                return None  # the configuration changed: this event cannot be resumed
            before = None if before_at is None else _from_flags(before_at, before_total, before_loads, before_flags,
                                                                before_taken)  # fmt: skip
            end = release_at if release_at is not None else 1e18
            changes = self._changes(site, joined, end)
            evidence = SiteEvidence(
                start=start, command_at=command_at, release_at=release_at, before=before,
                samples=[s for s in samples(self.db, [site], start, end)[site] if s.at > start],
                breakers={b: [c for p, i, c in changes if p == "breaker" and i == b] for b in shed.points.breakers},
                lock=None if shed.points.lock is None else [c for p, _, c in changes if p == "lock"],
                locked_at_start=bool(locked),
                grid=None if shed.points.grid_connection is None else [c for p, _, c in changes if p == "grid"],
                skews=[] if worst is None else [worst],
                interruptions=interruptions(self.db, start - MAX_AGE_PERIODS * config.sample_period, end),
            )  # fmt: skip
            event.sites[site] = evidence
            event.joined[site] = joined
        return event if event.sites else None

    def _changes(self, site: str, joined: float, end: float) -> list[tuple[str, int, Change]]:
        rows = self.db.execute(
            "SELECT point, ioa, received_ms, tagged_ms, state, valid FROM changes "
            "JOIN sites ON sites.id = changes.site "
            "WHERE sites.name = ? AND received_ms BETWEEN ? AND ? ORDER BY received_ms",
            (site, _ms(joined), _ms(min(end, 1e15))),
        )
        return [(point, ioa, _change(r, t, state, valid)) for point, ioa, r, t, state, valid in rows]

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


def _change(received_ms: int, tagged_ms: int | None, state: int | None, valid: int) -> Change:
    return Change(received_ms / 1000, None if tagged_ms is None else tagged_ms / 1000,
                  None if state is None else bool(state), bool(valid))  # fmt: skip


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
            "SELECT at_ms, total, loads, flags, age_ms FROM samples JOIN sites ON sites.id = samples.site "
            "WHERE sites.name = ? AND at_ms BETWEEN ? AND ? ORDER BY at_ms",
            (name, _ms(start), _ms(min(end, 1e15))),
        )
        for at_ms, total, loads, flags, age_ms in rows:
            taken = None if age_ms is None else (at_ms - age_ms) / 1000
            out[name].append(_from_flags(at_ms / 1000, total, loads, flags, taken))
    return out


def interruptions(db: sqlite3.Connection, start: float, end: float) -> list[Interruption]:
    """Interruptions that meet the span, oldest first."""
    rows = db.execute("SELECT start, end, cause, lost FROM interruptions WHERE start <= ? AND end >= ? ORDER BY start",
                      (end, start))  # fmt: skip
    return [Interruption(*row) for row in rows]
