"""What the feeder's replay ring costs the relay (bench/SHEDDING.md): CPU per 1,000 copies
of `ShedFeeder._frames` (number, frame, keep in the ring, evict) against the framing alone
(`encode`, what the feeder did before the ring) in the same run, and the ring's memory when
full (1.5 sample periods + REPLAY_SLACK of copies at the offered rate).

    python -m bench run shedding_ring [--rate 1000] [--rounds 5] [--json]   # from the checkout's root
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import trio

from bench.common import percentile
from concentrator.config import Endpoint
from concentrator.shedding.config import SheddingConfig, ShedSite, SitePoints
from concentrator.shedding.tap import FEED_PERIOD, ShedFeeder, ShedTap, encode
from concentrator.sim.points import float_measurements

SITES = 100
POINTS = SitePoints(1001, (1002, 1003), (2001,), 3001, 3002)


def config(limit: int) -> SheddingConfig:
    sites = tuple(ShedSite(f"site-{i:03d}", (100 + i,), False, POINTS, 5000, 2000) for i in range(SITES))
    return SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), 4.0, limit, sites)


async def measure(rate: int, seconds: float) -> dict[str, float]:
    """Offer `seconds` of copies at `rate`/s in FEED_PERIOD batches (the tap's times advance
    as they would), through the feeder and through the framing alone."""
    cfg = config(limit=10_000_000)
    tap = ShedTap(frozenset(s.name for s in cfg.sites), cfg.queue_limit)
    feeder = ShedFeeder(cfg, tap)
    asdu = float_measurements(101, [(1001, 900.0), (1002, 400.0), (1003, 300.0)], time.time())
    per_batch = max(1, round(rate * FEED_PERIOD))
    batches = round(seconds / FEED_PERIOD)
    names = [s.name for s in cfg.sites]
    # Copies are stamped as if `seconds` had passed: the ring evicts by their age.
    start = trio.current_time() - seconds
    feeder_cpu = frame_cpu = 0.0
    tracemalloc.start()
    for b in range(batches):
        now = start + b * FEED_PERIOD
        for k in range(per_batch):
            tap.up(names[k % SITES], asdu, now)
        entries = list(tap.entries)
        began = time.process_time()
        feeder._frames()
        feeder_cpu += time.process_time() - began
        began = time.process_time()
        wall = time.time()
        b"".join([encode(site, data, at + wall, 0) for site, data, at in entries])
        frame_cpu += time.process_time() - began
    ring_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    copies = per_batch * batches
    return {
        "copies": copies, "ring_copies": len(feeder.ring), "ring_window_s": feeder.replay_window,
        "ring_mb": ring_bytes / 1e6, "feeder_cpu_s_per_1000": 1000 * feeder_cpu / copies,
        "framing_only_cpu_s_per_1000": 1000 * frame_cpu / copies,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000, help="copies per second offered (bench 'nominal': 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds = 1.5 * 4.0 + 10.0 + 4.0  # fills the ring and runs evictions for 4 s
    rounds = [trio.run(measure, args.rate, seconds) for _ in range(args.rounds)]
    result = {key: percentile((r[key] for r in rounds), 50) for key in rounds[0]}
    result["rounds"] = args.rounds
    result["rate"] = args.rate
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
