"""Failover benchmark: outage seen by the BMI per fault type, over many runs.

    sudo python -m bench run failover --runs 10                       # defaults: 100 ms x 3
    sudo python -m bench run failover --runs 10 --probe-interval 0.05

(from the checkout's root)

Builds one lab (tests.lab.harness: BMI, concentrator, sites, primary and backup
veths, a link manager per namespace), runs UPDC stations, the real relay and a BMI,
and for each fault type repeats: inject on the primary, wait for traffic to flow
on the backup, measure, restore, wait for the fail-back. Per run it records the
outage at the BMI (last ASDU before, first after; the worst CA behind the faulted
link), ASDUs lost and duplicated, whether the IEC 104 sessions were kept, and the
link manager's own detection time. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import percentile
from tests.lab.harness import Iec104Stream, Lab, install_signal_cleanup, run
from tests.lab.measure import analyze


def _both_down(lab: Lab, link: str, _path: str) -> None:
    """Both paths down for a second, then the backup alone comes back."""
    lab.link_down(link, "primary")
    lab.link_down(link, "backup")
    time.sleep(1.0)
    lab.link_up(link, "backup")


def _flap(lab: Lab, link: str, path: str) -> None:
    """The primary flaps: five short carrier losses 100 ms apart, then stays down."""
    for _ in range(5):
        lab.link_down(link, path)
        time.sleep(0.05)
        lab.link_up(link, path)
        time.sleep(0.05)
    lab.link_down(link, path)


FAULTS: dict[str, tuple[str, Callable[[Lab, str, str], None], Callable[[Lab, str, str], None]]] = {
    # name: (link, inject on the primary, restore the primary)
    "uplink-link-down": ("uplink", Lab.link_down, Lab.link_up),
    "uplink-silent-loss": ("uplink", Lab.silent_loss, Lab.silent_restore),
    "site-link-down": ("site1", Lab.link_down, Lab.link_up),
    "site-silent-loss": ("site1", Lab.silent_loss, Lab.silent_restore),
    "uplink-flap": ("uplink", _flap, Lab.link_up),
    "uplink-both-down-1s": ("uplink", _both_down, Lab.link_up),
}
DEFAULT_FAULTS = "baseline,uplink-link-down,uplink-silent-loss,site-link-down,site-silent-loss"


def settle(stream: Iec104Stream, after: float) -> float:
    end = time.monotonic() + after
    stream.wait_flowing(since=end, timeout=after + 20.0)
    return time.monotonic()


def baseline_run(lab: Lab, stream: Iec104Stream) -> dict[str, Any]:
    """No fault: the longest gap between ASDUs in a window as long as a fault's, i.e.
    the jitter of the stream itself, to read the fault outages against."""
    settle(stream, 0.3)
    start = time.monotonic()
    until = settle(stream, 1.1)
    rows = stream.rows()
    res = [analyze(rows, start, stream=ca, since=start - 2.0, until=until) for ca in stream.streams]
    return {
        "fault": "baseline",
        "outage_s": max(r.outage for r in res),
        "lost": sum(r.lost for r in res),
        "duplicated": sum(r.duplicated for r in res),
        "sessions_kept": True,
        "switch_reason": "-",
        "detection_s": 0.0,
        "route_s": 0.0,
        "failback_outage_s": 0.0,
        "failback_lost": 0,
    }


def one_run(lab: Lab, stream: Iec104Stream, fault: str) -> dict[str, Any]:
    if fault == "baseline":
        return baseline_run(lab, stream)
    link, inject, restore = FAULTS[fault]
    # Site links left to the relay's second endpoint: no link manager to wait for.
    by_relay = link != "uplink" and lab.site_paths == "endpoints"
    cas = stream.streams if link == "uplink" else [100 + int(link.removeprefix("site"))]
    before = lab.switch_count(link)
    others = [other.name for other in lab.links if other.name != link]
    others_before = sum(lab.switch_count(name) for name in others)
    bmi_before = stream.bmi_connections()
    sites_before = {s.name: stream.site_connections(s.name) for s in lab.sites}
    settle(stream, 0.3)
    fault_at = time.monotonic()
    inject(lab, link, "primary")
    if by_relay:
        # The relay notices only by its own timers (t1 15 s) or a connection error.
        for ca in cas:
            stream.wait_flowing(ca, timeout=60.0, since=time.monotonic())
    else:
        lab.wait_active(link, "backup")
    until = settle(stream, 0.8)
    rows = stream.rows()
    res = [analyze(rows, fault_at, stream=ca, since=fault_at - 2.0, until=until) for ca in cas]
    switch: dict[str, Any] = {"reason": "relay-endpoint", "detection_seconds": math.nan, "route_seconds": math.nan}
    if not by_relay:
        # The first switch of this run (the state file keeps the last 100).
        switch = lab.switches(link)[-(lab.switch_count(link) - before)]
    restore(lab, link, "primary")
    if by_relay:
        # The relay stays on the second endpoint; move it back for the next run by
        # destroying its socket there (ss -K): it reconnects, primary endpoint first.
        site = lab.link(link)
        run(["ip", "netns", "exec", lab.ns("conc"), "ss", "-K", "dst", site.backup.peer_ip])
        settle(stream, 0.5)
    failback = math.nan
    failback_lost = 0
    if not by_relay:
        lab.wait_active(link, "primary")
        back_at = time.monotonic()
        until_back = settle(stream, 0.5)
        rows = stream.rows()
        back = [analyze(rows, back_at - lab.hold_time, stream=ca, since=fault_at, until=until_back) for ca in cas]
        failback = max(r.outage for r in back)
        failback_lost = sum(r.lost for r in back)
    # Expected: the failover and the fail-back on the faulted link, nothing elsewhere
    # (a spurious probe-loss switch would show here).
    switches_in_run = lab.switch_count(link) - before
    other_switches = sum(lab.switch_count(name) for name in others) - others_before
    kept = stream.bmi_connections() == bmi_before and all(
        stream.site_connections(name) == n for name, n in sites_before.items()
    )
    return {
        "fault": fault,
        "outage_s": max(r.outage for r in res),
        "lost": sum(r.lost for r in res),
        "duplicated": sum(r.duplicated for r in res),
        "sessions_kept": kept,
        "switch_reason": switch["reason"],
        "detection_s": switch["detection_seconds"],
        "route_s": switch["route_seconds"],
        "failback_outage_s": failback,
        "failback_lost": failback_lost,
        "switches_in_run": switches_in_run,
        "other_switches": other_switches,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--rate", type=float, default=500.0, help="ASDU/s per site")
    ap.add_argument("--probe-interval", type=float, default=0.1)
    ap.add_argument("--misses", type=int, default=3)
    ap.add_argument("--hold-time", type=float, default=1.0)
    ap.add_argument("--rto-min", type=float, default=None, help="network.rto_min (seconds)")
    ap.add_argument("--faults", default=DEFAULT_FAULTS, help=f"comma-separated, of: baseline, {', '.join(FAULTS)}")
    ap.add_argument(
        "--site-paths",
        choices=["netd", "endpoints"],
        default="netd",
        help="site links moved by the link manager, or left to the relay's second endpoint",
    )
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    install_signal_cleanup()
    runs: list[dict[str, Any]] = []
    with Lab(
        n_sites=args.sites,
        probe_interval=args.probe_interval,
        probe_misses=args.misses,
        hold_time=args.hold_time,
        rto_min=args.rto_min,
        site_paths=args.site_paths,
    ) as lab:
        stream = Iec104Stream(lab, rate=args.rate)
        stream.start()
        try:
            for fault in args.faults.split(","):
                for n in range(args.runs):
                    r = one_run(lab, stream, fault)
                    runs.append(r)
                    print(
                        f"{fault} run {n + 1}: outage {r['outage_s'] * 1000:.1f} ms, lost {r['lost']}, "
                        f"dup {r['duplicated']}, kept {r['sessions_kept']}, detection "
                        f"{r['detection_s'] * 1000:.1f} ms ({r['switch_reason']}), fail-back outage "
                        f"{r['failback_outage_s'] * 1000:.1f} ms",
                        flush=True,
                    )
        finally:
            stream.stop()
    print()
    rto = "kernel default" if args.rto_min is None else f"{args.rto_min * 1000:.0f} ms"
    print(
        f"probe {args.probe_interval * 1000:.0f} ms x {args.misses}, rto_min {rto}, "
        f"site paths by {args.site_paths}, {args.sites} sites x "
        f"{args.rate:.0f} ASDU/s, {args.runs} runs per fault, kernel {platform.release()}"
    )
    print(
        "| fault | outage median | outage max | detection median | lost | duplicated | sessions kept "
        "| fail-back outage max |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fault in args.faults.split(","):
        rs = [r for r in runs if r["fault"] == fault]
        out = [r["outage_s"] * 1000 for r in rs]
        det = [r["detection_s"] * 1000 for r in rs if not math.isnan(r["detection_s"])] or [math.nan]
        back = [r["failback_outage_s"] for r in rs if not math.isnan(r["failback_outage_s"])] or [math.nan]
        print(
            f"| {fault} | {percentile(out, 50):.1f} ms | {max(out):.1f} ms | "
            f"{percentile(det, 50):.1f} ms | {sum(r['lost'] for r in rs)} | "
            f"{sum(r['duplicated'] for r in rs)} | {sum(r['sessions_kept'] for r in rs)}/{len(rs)} | "
            f"{max(back) * 1000:.1f} ms |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
