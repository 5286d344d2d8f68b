"""The SQLite record: kill -9 mid-write leaves a consistent file, a restart continues it,
pruning keeps the retention, and the monitor process carries on after a restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from concentrator.config import Endpoint
from concentrator.shedding.config import SheddingConfig, ShedSite, SitePoints
from concentrator.shedding.monitor import SampleRow
from concentrator.shedding.record import DAY, ShedRecord, integrity
from concentrator.shedding.tap import CHILD, DROPPED, DROPPED_BODY, config_frame, encode
from concentrator.shedding.verdict import Sample
from concentrator.sidecar import command
from concentrator.sim.points import breaker_command, double_point, float_measurements, release_command
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
FILL = [sys.executable, "-m", "bench.shedding_fill"]  # run from ROOT (cwd): bench is not installed


def count(db: Path, query: str = "SELECT count(*) FROM samples") -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute(query).fetchone()[0])


def test_kill_9_while_writing_loses_no_committed_batch_and_a_restart_continues(tmp_path: Path) -> None:
    db = tmp_path / "record.sqlite"
    batch = 100 * 20  # 100 sites x 20 slots per transaction: the writer is inside one most of the time
    writer = subprocess.Popen([*FILL, "--db", str(db), "--days", "1", "--slots", "20"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    assert (tmp_path / "record.sqlite-wal").stat().st_size > 0  # it was writing, not checkpointed and idle
    assert integrity(str(db)) == "ok"
    rows = count(db)
    assert rows > 0 and rows % batch == 0, rows  # whole transactions only
    first = count(db, "SELECT min(at_ms) FROM samples")

    subprocess.run([*FILL, "--db", str(db), "--days", "0.01", "--resume"], check=True, capture_output=True,
                   timeout=120, cwd=ROOT)  # fmt: skip
    assert integrity(str(db)) == "ok"
    assert count(db) == rows + 216 * 100  # 0.01 day = 216 slots of 4 s, 100 sites
    assert count(db, "SELECT min(at_ms) FROM samples") == first
    # continued after the last slot, without overlap: one row per site and slot
    assert count(db, "SELECT count(*) FROM (SELECT at_ms FROM samples GROUP BY at_ms)") * 100 == count(db)


def test_prune_keeps_the_retention(tmp_path: Path) -> None:
    record = ShedRecord(str(tmp_path / "r.sqlite"), retention_days=60)
    now = 1_800_000_000.0
    rows = [SampleRow("a", Sample(now - days * DAY, 1.0, True, 1.0, True), True, None) for days in (61, 60.5, 59, 1)]
    record.write(rows)
    assert record.prune(now) == 2
    left = [r[0] for r in record.db.execute("SELECT at_ms FROM samples ORDER BY at_ms")]
    assert left == [round((now - 59 * DAY) * 1000), round((now - DAY) * 1000)]
    record.close()


POINTS = SitePoints(1001, (1002,), (2001,), 3001, 3002)
SITE = ShedSite("a", (101,), False, POINTS, 1000, 400)


def monitor_process(db: Path) -> subprocess.Popen[bytes]:
    config = SheddingConfig(str(db), 60, Endpoint("127.0.0.1", free_port()), 0.2, 1000, (SITE,))
    process = subprocess.Popen(command(CHILD), stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdin is not None
    process.stdin.write(config_frame(config))
    process.stdin.flush()
    return process


def shedding(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    t = time.time()
    frames = [encode("a", float_measurements(101, [(1001, 900.0), (1002, 400.0)], t), t, 1),
              encode("", breaker_command(101, False), t + 0.01, 2),
              encode("a", double_point(101, 2001, False, t + 0.05), t + 0.06, 3),
              encode("", release_command(101), t + 0.1, 4)]  # fmt: skip
    process.stdin.write(b"".join(frames))
    process.stdin.flush()


def wait_for(db: Path, query: str, value: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if db.exists() and count(db, query) == value:
                return
        except sqlite3.OperationalError:  # the schema is being created
            pass
        assert time.monotonic() < deadline, f"{query} never gave {value}"
        time.sleep(0.05)


def test_the_monitor_process_killed_and_restarted_continues_the_record(tmp_path: Path) -> None:
    db = tmp_path / "record.sqlite"
    process = monitor_process(db)
    try:
        shedding(process)
        wait_for(db, "SELECT count(*) FROM events WHERE end IS NOT NULL", 1)
        samples_before = count(db)
        process.kill()
        process.wait()
        assert integrity(str(db)) == "ok"
        process = monitor_process(db)
        shedding(process)
        wait_for(db, "SELECT max(id) FROM events WHERE end IS NOT NULL", 2)
        assert count(db, "SELECT count(*) FROM events") == 2
        assert count(db) > samples_before
    finally:
        process.kill()
        process.wait()


def test_a_record_that_cannot_be_opened_is_named_and_the_monitor_exits(tmp_path: Path) -> None:
    config = SheddingConfig(str(tmp_path / "missing" / "r.sqlite"), 60, Endpoint("127.0.0.1", 0), 4.0, 100, (SITE,))
    run = subprocess.run(command(CHILD), input=config_frame(config), capture_output=True, timeout=60)
    assert run.returncode == 2
    assert f"cannot open the record {tmp_path / 'missing' / 'r.sqlite'}" in run.stderr.decode()


def test_copies_the_tap_dropped_make_the_monitor_process_record_an_interruption(tmp_path: Path) -> None:
    db = tmp_path / "record.sqlite"
    process = monitor_process(db)
    try:
        assert process.stdin is not None
        t = time.time()
        frames = [encode("a", float_measurements(101, [(1001, 900.0), (1002, 400.0)], t), t, 1),
                  encode("", breaker_command(101, False), t + 0.01, 2),
                  encode("a", double_point(101, 2001, False, t + 0.05), t + 0.06, 3),
                  # The relay's tap was full: 5 copies tapped between t + 0.1 and t + 0.2 dropped.
                  encode(DROPPED, DROPPED_BODY.pack(5, t + 0.1, t + 0.2), t + 0.25, 4),
                  encode("", release_command(101), t + 0.3, 5)]  # fmt: skip
        process.stdin.write(b"".join(frames))
        process.stdin.flush()
        wait_for(db, "SELECT count(*) FROM events WHERE end IS NOT NULL", 1)
        with sqlite3.connect(db) as c:
            (status, note), *_ = c.execute("SELECT status, note FROM verdicts WHERE site = 'a'").fetchall()
            interruptions = c.execute("SELECT cause, lost FROM interruptions").fetchall()
        assert status == "not_judged" and note.startswith("tap queue full: 5 copies from ")
        assert [(cause.split(":")[0], lost) for cause, lost in interruptions] == [("tap queue full", 5)]
    finally:
        process.kill()
        process.wait()
