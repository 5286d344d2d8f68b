"""HA takeover benchmark: the BMI's outage when the active appliance of a pair fails.

    sudo python -m bench run ha_takeover --fault kill --runs 10   # -> bench/results/DATE-ha-kill.json
    sudo python -m bench run ha_takeover --fault cut  --runs 10   # -> bench/results/DATE-ha-cut.json
    sudo python -m bench run ha_takeover --fault path --runs 10   # -> bench/results/DATE-ha-path.json

(from the checkout's root; `--out FILE` writes elsewhere)

One lab (tests/netns/ha_lab.py: two real appliances with keepalived, the HA supervisor,
the relay and netd (with its smcrouted) each, two uplink paths; a BMI with its own netd;
twelve UPDCs that keep what was not confirmed). Each run fails the active appliance
(`kill`: SIGKILL to every process in its namespace; `cut`: all three of its links
down), waits until every site's data arrives again, measures,
then brings the failed appliance back (restarted, or links up) as the backup, so the
runs alternate between the two. Per run: the outage at the BMI (longest gap between
arrivals around the fault), the supervisor's own MASTER-to-listening time, per-site
loss / order / duplicates, the BMI's netd path switches during the run, and the trips
(a datagram every 20 ms from 0.5 s before the fault for 3 s) counted at the sites:
lost, largest gap between distinct trips, copies (two per trip while both appliances
forward).
Prints a summary and writes JSON with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

from bench.common import percentile, result_path
from tests.lab.harness import install_signal_cleanup
from tests.netns.ha_lab import HaLab, check_stream, outage, per_site

TRIPS, TRIP_INTERVAL = 150, 0.02


def _bmi_back(log: str, before: int) -> str | None:
    """How the new master saw the BMI come back in this run (its log's n-th such line)."""
    lines = [line for line in log.splitlines() if "the BMI is back" in line]
    if len(lines) <= before:
        return None
    return "after the nudge" if "after the nudge" in lines[before] else "without a nudge"


def one_run(lab: HaLab, fault: str, active: str) -> dict[str, Any]:
    backup = "b" if active == "a" else "a"
    if lab.role(active) != "active" or lab.role(backup) != "standby":
        raise RuntimeError(f"expected {active} active and {backup} standby: {lab.state(active)} {lab.state(backup)}")
    rows_before = len(lab.rows())
    dups_before = {ca: check_stream(arrivals)["duplicates"] for ca, arrivals in per_site(lab.rows()).items()}
    bmi_switches = lab.uplink("bmi")["switches_total"]
    backs_before = lab.log(f"ha-{backup}", tail=None).count("the BMI is back")
    sender = lab.start_trips(TRIPS, TRIP_INTERVAL)  # returns with 25 sent (0.5 s) before the fault
    at = time.monotonic()
    if fault == "kill":
        lab.kill_node(active)
    else:
        lab.cut_links(active)
    lab.wait_role(backup, "active", timeout=60)
    became_active = time.monotonic() - at
    lab.wait_all_flowing(at, timeout=60)
    sender.wait(60)
    time.sleep(1.0)
    rows = lab.rows()
    sites = {ca: check_stream(arrivals) for ca, arrivals in per_site(rows).items()}
    sent, received = lab.trips()
    sent = sent[-TRIPS:]
    seqs = {s["seq"] for s in sent}
    got = [r for r in received if r["seq"] in seqs]
    first = sorted(min(r["t_ns"] for r in got if r["seq"] == seq) for seq in {r["seq"] for r in got})
    result = {
        "fault": fault,
        "failed": active,
        "outage_s": outage(rows, at),
        "backup_active_after_s": became_active,
        "master_to_listening_s": lab.state(backup)["last_takeover_seconds"],
        "asdus_at_bmi": len(rows) - rows_before,
        "missing": sum(s["missing"] for s in sites.values()),
        "out_of_order": sum(s["out_of_order"] for s in sites.values()),
        "duplicates_max_per_site": max(s["duplicates"] - dups_before.get(ca, 0) for ca, s in sites.items()),
        # The BMI's route to the service address may move to the second virtual address
        # while no appliance holds either (both probed paths down, the first back wins).
        "bmi_path_switches": lab.uplink("bmi")["switches_total"] - bmi_switches,
        # How the BMI dropped its dead connection: the new master's nudge, or a
        # retransmission of its own that met the new master's reset first.
        "bmi_back": _bmi_back(lab.log(f"ha-{backup}", tail=None), backs_before),
        "trips_sent": len(sent),
        "trips_lost": len(seqs - {r["seq"] for r in got}),
        "trip_copies": len(got),
        "trip_largest_gap_s": max((b - a for a, b in zip(first, first[1:], strict=False)), default=0) / 1e9,
        # The sender's own largest gap (scapy, one frame at a time on a loaded machine): the baseline.
        "trip_send_largest_gap_s": max((b["t_ns"] - a["t_ns"] for a, b in zip(sent, sent[1:], strict=False)), default=0)
        / 1e9,
    }
    # The failed appliance comes back as the backup.
    if fault == "kill":
        lab.start_node(active)
    else:
        lab.restore_links(active)
    lab.wait_ready_backup(active, timeout=60)  # its relay loaded: a backup that can take over
    time.sleep(1.0)
    return result


def path_run(lab: HaLab) -> dict[str, Any]:
    """`--fault path`: the BMI's port on the primary uplink LAN fails (not an appliance):
    netd switches paths inside the pair, no takeover. No trips in this mode: the trip
    sender sends out of a fixed interface, the one being cut."""
    roles = {node: (lab.role(node), lab.state(node)["transitions"]) for node in ("a", "b")}
    connections = lab.bmi_connections()
    switches = {role: lab.uplink(role)["switches_total"] for role in ("a", "b", "bmi")}
    dups_before = {ca: check_stream(arrivals)["duplicates"] for ca, arrivals in per_site(lab.rows()).items()}
    at = time.monotonic()
    lab.cut_bmi_path(0)
    lab.wait_uplink_path("a", "backup", 30)
    lab.wait_all_flowing(at, timeout=60)
    time.sleep(2.0)
    rows = lab.rows()
    sites = {ca: check_stream(arrivals) for ca, arrivals in per_site(rows).items()}
    switch = lab.uplink("a")["recent_switches"][-1]
    result = {
        "fault": "path",
        "outage_s": outage(rows, at),
        "netd_detection_s": switch["detection_seconds"],
        "netd_switches": {role: lab.uplink(role)["switches_total"] - n for role, n in switches.items()},
        "takeover": roles != {node: (lab.role(node), lab.state(node)["transitions"]) for node in ("a", "b")},
        "bmi_reconnections": lab.bmi_connections() - connections,
        "missing": sum(s["missing"] for s in sites.values()),
        "out_of_order": sum(s["out_of_order"] for s in sites.values()),
        "duplicates_max_per_site": max(s["duplicates"] - dups_before.get(ca, 0) for ca, s in sites.items()),
    }
    lab.cut_bmi_path(0, up=True)  # back to the primary after netd's hold time
    for role in ("a", "b", "bmi"):
        lab.wait_uplink_path(role, "primary", 60)
    time.sleep(1.0)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fault", choices=["kill", "cut", "path"], default="kill")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--advert-interval", type=float, default=0.1)
    ap.add_argument("--rate", type=float, default=20.0, help="ASDU/s per site")
    ap.add_argument("--out", help="default bench/results/DATE-ha-FAULT.json")
    args = ap.parse_args()
    install_signal_cleanup()
    load_before = os.getloadavg()
    results = []
    with HaLab(12, advert_interval=args.advert_interval, rate=args.rate) as lab:
        lab.start_node("a")
        lab.wait_role("a", "active")
        lab.start_node("b")
        lab.wait_ready_backup("b")
        lab.start_traffic()
        lab.start_trip_receiver()
        active = "a"
        for i in range(args.runs):
            if args.fault == "path":
                r = path_run(lab)
                results.append(r)
                print(f"run {i + 1}: {json.dumps(r)}", flush=True)
                continue
            r = one_run(lab, args.fault, active)
            results.append(r)
            print(
                f"run {i + 1}: {r['failed']} {args.fault}: outage {r['outage_s']:.3f} s, "
                f"master->listening {r['master_to_listening_s']:.3f} s, missing {r['missing']}, "
                f"out of order {r['out_of_order']}, dups/site <= {r['duplicates_max_per_site']}, "
                f"trips lost {r['trips_lost']}/{r['trips_sent']} (gap {r['trip_largest_gap_s'] * 1000:.0f} ms, "
                f"sender's own {r['trip_send_largest_gap_s'] * 1000:.0f} ms)",
                flush=True,
            )
            active = "b" if active == "a" else "a"
    outages = [r["outage_s"] for r in results]
    summary = {
        "fault": args.fault,
        "runs": len(results),
        "advert_interval": args.advert_interval,
        "rate_per_site": args.rate,
        "sites": 12,
        "outage_median_s": percentile(outages, 50),
        "outage_max_s": max(outages),
        "outage_min_s": min(outages),
        "missing_total": sum(r["missing"] for r in results),
        "out_of_order_total": sum(r["out_of_order"] for r in results),
        "duplicates_max_per_site": max(r["duplicates_max_per_site"] for r in results),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
    }
    if args.fault == "path":
        summary["takeovers"] = sum(r["takeover"] for r in results)
        summary["bmi_reconnections_total"] = sum(r["bmi_reconnections"] for r in results)
    else:
        summary["trips_lost_total"] = sum(r["trips_lost"] for r in results)
        summary["trip_largest_gap_max_s"] = max(r["trip_largest_gap_s"] for r in results)
        summary["trip_send_largest_gap_max_s"] = max(r["trip_send_largest_gap_s"] for r in results)
    print(json.dumps(summary, indent=2))
    with open(args.out or result_path(f"ha-{args.fault}"), "w") as f:
        json.dump({"summary": summary, "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
