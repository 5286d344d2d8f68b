"""The relay's latency with the shedding monitor off and on, in the same run (bench/SHEDDING.md).

    python -m bench run shedding_latency [--rounds 2] [--duration 10] [--out FILE]   # from the checkout's root

writes bench/results/DATE-shedding-latency.json unless --out says otherwise.

Uses run_all.py's harness unchanged (load generator: 100 sites, steady ASDUs and
select/execute cycles; the relay as its own process), alternating runs without and with
a `shedding:` section that maps every site, so that both see the same machine load. With
the monitor on, every site ASDU goes through the tap into the monitor process, which
decodes it (the generator's ASDUs are M_BO_NA_1: decoded, matched against the point map,
not used), closes a 4-second slot for 100 sites and writes the SQLite record.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import run_all
from bench.common import result_path

BASE_YAML = run_all.relay_yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_monitor(workdir: Path):  # type: ignore[no-untyped-def]
    def relay_yaml(sites: int, site_port: int, uplink_port: int, metrics_port: int, uplink_kw: tuple[int, int]) -> str:
        text = BASE_YAML(sites, site_port, uplink_port, metrics_port, uplink_kw)
        lines = ["shedding:", f"  database: {workdir / f'record-{site_port}.sqlite'}",
                 f'  metrics_listen: "127.0.0.1:{free_port()}"',
                 "  points: {total_power: 1001, loads: [1002], breakers: [2001], breaker_command: 3001, "
                 "release_command: 3002, lock: 2002}", "  sites:"]  # fmt: skip
        lines += [f"    site-{i + 1:04d}: {{contractual_kw: 5000, interruptible_kw: 2000}}" for i in range(sites)]
        return text + "\n".join(lines) + "\n"

    return relay_yaml


def main(section: Callable[[Path], Callable[..., str]] = with_monitor, name: str = "shedding-latency") -> None:
    """Runs alternating without and with `section` (the relay's YAML with the section added)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", default="10")
    parser.add_argument("--out", type=Path, help=f"default bench/results/DATE-{name}.json")
    args = parser.parse_args()
    out = args.out or result_path(name)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="shed-bench-") as tmp:
        workdir = Path(tmp)
        bench = run_all.Bench(workdir, quick=True)
        for round_ in range(args.rounds):
            for load, rate, cycles in (("nominal", "10", "10"), ("10x", "100", "100")):
                for monitor in (False, True):
                    run_all.relay_yaml = section(workdir) if monitor else BASE_YAML
                    loadgen = ["--rate", rate, "--commands", cycles, "--duration", args.duration, "--warmup", "2"]
                    result = bench.run("relay", "steady", 100, loadgen_args=loadgen)
                    result.update(round=round_, load=load, monitor=monitor)
                    results.append(result)
                    up = result.get("up_latency_us") or result.get("latency_up_us") or {}
                    print(f"  {load} monitor={'on ' if monitor else 'off'}: {json.dumps(up)[:200]}", flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
