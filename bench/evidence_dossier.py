"""Run time and capture size of `concentrator evidence` for a 12-site appliance.

    python -m bench run evidence_dossier [--sites 12] [--duration 60] [--rate 10] [--out FILE]   # root, checkout's root

writes bench/results/DATE-evidence-dossier.json unless --out says otherwise.

The namespace lab of tests/netns/appliance.py (real relay, netd with smcrouted, UPDC
stations sending `--rate` ASDU/s each, a BMI interrogating every 0.1 s, trip datagrams
and unicast datagrams from the BMI) and the evidence command run for `--duration` s in
the concentrator's namespace. Reports the command's wall time (with and without the
PDF), its CPU time (capture and analysis, its own process), the pcap bytes and the
ASDUs matched, and the machine's load (other work shares the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from bench.common import result_path
from tests.lab.harness import Lab
from tests.netns.appliance import Appliance


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=12)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--out", help="default bench/results/DATE-evidence-dossier.json")
    args = ap.parse_args()
    with Lab(n_sites=args.sites, site_paths="endpoints", hold_time=1.0, trip_groups=[("239.192.10.9", 30109)]) as lab:
        app = Appliance(lab, "239.192.10.9", 30109, rate=args.rate)
        app.start()
        t0 = time.monotonic()
        code, doc, text = app.evidence(duration=args.duration)
        wall = time.monotonic() - t0
        own = re.search(r"run time ([0-9.]+) s \(CPU ([0-9.]+) s\)", text)
        assert own is not None, text
        ident = doc["sections"][1]["facts"]
        result = {
            "sites": args.sites,
            "duration_s": args.duration,
            "rate_per_site": args.rate,
            "exit": code,
            "verdicts": [s["verdict"] for s in doc["sections"]],
            "wall_s_with_pdf": round(wall, 1),
            "wall_s_before_pdf": float(own.group(1)),
            "cpu_s_before_pdf": float(own.group(2)),
            "pcap_bytes": sum(ident["pcap_bytes"].values()),
            "interfaces": len(ident["pcap_bytes"]),
            "segments": ident["segments"],
            "iframes": ident["apdus"],
            "uplink_asdus": ident["match"]["up"],
            "bmi_asdus": ident["match"]["bmi"],
            "kernel_drops": sum(ident["kernel_drops"].values()),
            "cpus": os.cpu_count(),
            "load_1min_at_end": os.getloadavg()[0],
        }
    print(json.dumps(result, indent=1))
    with open(args.out or result_path("evidence-dossier"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
