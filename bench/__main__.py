"""Every benchmark, by name: `python -m bench list`, `python -m bench run NAME [args]`.

Run from the checkout's root (bench/ is not installed; nothing here edits sys.path).
`run` runs the benchmark's module as `python -m bench.NAME [args]` would, in this
process: its options are its own (`python -m bench run NAME --help`), its exit status is
the command's. Figures go where each one says, by default bench/results/DATE-NAME.json;
the write-ups beside them (bench/*.md) quote and interpret them.

Adding a benchmark is one line in BENCHMARKS. The tools the benchmarks use are modules
of their own, not listed: the load generator (`python -m bench.loadgen`), the slowloris
(`python -m bench.slowloris`), the profile summary (`python -m bench.profile_summary`).
"""

from __future__ import annotations

import runpy
import sys

# name (bench/NAME.py) -> one line: what it measures; root: needs root and network namespaces.
BENCHMARKS: dict[str, str] = {
    "run_all": "relay latency, ping-pong, storm, stream and scale against direct and haproxy (RESULTS.md)",
    "pingpong": "one-way latency with a client that is not the bottleneck: direct, haproxy, trio, relay",
    "floor": "the least one forwarded message costs: haproxy, an epoll loop, a bare trio forwarder",
    "core_cpu": "CPU per ASDU of the relay core alone, in-process, no sockets (PERF.md)",
    "wide_window": "throughput against the uplink's w, every site streaming or some idle (WIDE_WINDOW.md)",
    "handover": "Ed. 2 hand-over away and straight back, many times, every site streaming (HANDOVER.md)",
    "refused_flood": "connect/close flood from refused addresses while 12 sites stream (FLOOD.md)",
    "fuzz_campaign": "mutated frames from both sides against the real relay while good sites stream (FUZZ.md)",
    "scrape_stall": "relay latency with and without metric scrapes, and under a slowloris (SCRAPE.md)",
    "config_limits": "time and memory check-config takes to refuse abusive files (CONFIG_LIMITS.md)",
    "shedding_latency": "relay latency with the shedding monitor off and on (SHEDDING.md)",
    "shedding_fill": "size and write cost of the shedding record filled with 4-second samples (SHEDDING.md)",
    "shedding_ring": "CPU and memory of the shedding feeder's replay ring (SHEDDING.md)",
    "incidents_latency": "relay latency with the incident register off and on (docs/incidents.md)",
    "failover": "root: outage seen by the BMI per link fault, over many runs (FAILOVER.md)",
    "soak": "root: an hour of seeded random faults at 100 sites, invariants checked while it runs (SOAK.md)",
    "trip_latency": "root: trip datagrams against unicast on the same path, relay idle, saturated, stopped (TRIP.md)",
    "ha_takeover": "root: the BMI's outage when the active appliance of an HA pair fails (HA.md)",
    "evidence_dossier": "root: run time and capture size of `concentrator evidence`, 12 sites (EVIDENCE.md)",
}

USAGE = "usage: python -m bench list | python -m bench run NAME [ARGS...]   (from the checkout's root)"


def main(argv: list[str]) -> int:
    if argv[:1] == ["list"] and len(argv) == 1:
        width = max(map(len, BENCHMARKS))
        for name, what in BENCHMARKS.items():
            print(f"{name:<{width}}  {what}")
        return 0
    if argv[:1] != ["run"] or len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    name = argv[1]
    if name not in BENCHMARKS:
        print(f"bench: no benchmark {name!r}; `python -m bench list` lists them", file=sys.stderr)
        return 2
    sys.argv = [f"bench {name}", *argv[2:]]
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
