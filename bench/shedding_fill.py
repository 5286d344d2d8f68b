"""Fill a shedding record with synthetic 4-second samples, as the monitor writes them, and
measure size and write cost (bench/SHEDDING.md). Each row carries the time its values
were taken, and each transaction the last copy applied, as the monitor writes them.

    python -m bench run shedding_fill --db /tmp/x.sqlite --sites 100 --days 2 [--resume] [--json]   # checkout's root

Each batch is one transaction through `ShedRecord.write` (the monitor's own path) with
`--slots` slots of every site (default 1: what the monitor writes per 4 s slot with the
default tick). Values are random around 900 kW, 1 % invalid, a breaker state and a skew,
so that SQLite's record encoding sees realistic variety. With --resume, continues after
the last slot already in the file (the restart test uses this).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import time

from bench.common import percentile
from concentrator.shedding.monitor import SampleRow
from concentrator.shedding.record import Applied, ShedRecord
from concentrator.shedding.verdict import Sample

PERIOD = 4.0
START = 1_800_000_000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--slots", type=int, default=1, help="slots per transaction")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    record = ShedRecord(args.db)
    start = START
    if args.resume:
        (last,) = record.db.execute("SELECT max(at_ms) FROM samples").fetchone()
        start = (last or START * 1000) / 1000 + PERIOD
    names = [f"site-{i:03d}" for i in range(1, args.sites + 1)]
    rng = random.Random(1)
    slots = int(args.days * 86_400 / PERIOD)
    costs: list[float] = []
    at = start
    for first in range(0, slots, args.slots):
        rows = []
        for _ in range(min(args.slots, slots - first)):
            for name in names:
                valid = rng.random() > 0.01
                taken = at - rng.uniform(0.5, 3.5)
                rows.append(SampleRow(name, Sample(at, rng.uniform(850, 950), valid, rng.uniform(390, 410), valid,
                                                   taken=taken), True, rng.uniform(0.001, 0.003)))  # fmt: skip
            at += PERIOD
        began = time.perf_counter()
        record.write(rows, Applied("fill", first + 1, at - PERIOD, at))  # as the monitor: the last copy applied
        costs.append(time.perf_counter() - began)
        if first == 0:
            print("writing", flush=True)  # the kill -9 test waits for this
    record.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    record.close()
    size = os.path.getsize(args.db)
    db = sqlite3.connect(args.db)
    (count,) = db.execute("SELECT count(*) FROM samples").fetchone()
    db.close()
    result = {
        "sites": args.sites, "days": args.days, "rows": count, "file_bytes": size,
        "bytes_per_row": size / count if count else None,
        "batches": len(costs), "rows_per_batch": args.sites * args.slots,
        "batch_ms_median": 1000 * percentile(costs, 50), "batch_ms_p99": 1000 * percentile(costs, 99),
        "batch_ms_max": 1000 * max(costs),
    }  # fmt: skip
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
