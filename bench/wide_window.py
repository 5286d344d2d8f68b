"""Issue 25, item 4: throughput through the relay against the uplink's w, with every site
streaming and with a few sites idle (the BMI confirms after w frames or after its t2).

    python -m bench run wide_window   # from the checkout's root: a Markdown table, bench/results/DATE-wide-window.json

12 sites at k 12 (sum of k: 144), uplink k 144, the BMI (bench.loadgen, t2 10 s) with
the same k and w as the relay's uplink. Every site but the idle ones sends RATE ASDU/s;
"delivered" is what reached the BMI during the measurement over what the sites offered
in the same time; "still at the sites" is what had not reached the BMI 30 s after the
sites stopped (kept unconfirmed by the UPDCs, not lost). One run per row, all in one
invocation (bench/run_all.py's Bench).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench.common import result_path
from bench.run_all import Bench

SITES, SITE_K, RATE, DURATION = 12, 12, 50.0, 10.0
SUM_K = SITES * SITE_K
# (uplink w, idle sites): the sum of k, the most 9 streaming sites can fill (108) and one
# above it, half the sum; with no, one, a quarter and half of the sites idle.
ROWS = [(144, 0), (144, 1), (144, 3), (109, 3), (108, 3), (72, 0), (72, 3), (72, 6)]


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), quick=False)
        for w, idle in ROWS:
            args = ["--rate", str(RATE), "--duration", str(DURATION), "--idle-sites", str(idle),
                    "--site-k", str(SITE_K)]  # fmt: skip
            result = bench.run("relay", "steady", SITES, uplink_kw=(SUM_K, w), loadgen_args=args)
            offered = RATE * (SITES - idle)
            results.append({"w": w, "idle": idle, "offered_per_s": offered, **result})
    result_path("wide-window").write_text(json.dumps(results, indent=1))
    print("| uplink w | idle sites | offered ASDU/s | delivered ASDU/s | delivered | up p50 ms | up p99 ms "
          "| still at the sites |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r.get("failed"):
            print(f"| {r['w']} | {r['idle']} | failed: {r['errors']} |")
            continue
        up = r["up"]
        rate = r["up_asdus_per_s"]
        kept = r["sent"] - r["received"]
        p50, p99 = up.get("p50", float("nan")) / 1000, up.get("p99", float("nan")) / 1000
        print(f"| {r['w']} | {r['idle']} | {r['offered_per_s']:.0f} | {rate:.0f} | {rate / r['offered_per_s']:.0%} "
              f"| {p50:.1f} | {p99:.1f} | {kept} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
