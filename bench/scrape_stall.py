"""Does scraping the relay's metrics stall it? Relay latency with and without a scrape
of /metrics every second.

    python bench/scrape_stall.py               # 3 pairs of 20 s runs, 100 sites x 10 ASDU/s
    python bench/scrape_stall.py --quick       # 1 pair of 6 s runs

Each run is the relay as its own process (`python -m concentrator relay`, which serves
its metrics on metrics.listen) driven by the load generator (bench.loadgen,
steady: every site sends stamped ASDUs, the BMI measures each one's latency). In the
"scraped" runs a thread here GETs /metrics every second for the whole run, as Prometheus
would, and times each scrape. Runs alternate (off, on, off, on, ...) so that the load
other processes put on the machine falls on both alike. Results go to stdout as a table
and to bench/scrape_results_<sites>.json; bench/SCRAPE.md has the recorded figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import HOST, port_block, relay_yaml, start_loadgen, started  # noqa: E402 (bench/ is not a package)

RUN_TIMEOUT = 180


class Scraper:
    """GET /metrics every `period` seconds on a thread; keeps each scrape's duration."""

    def __init__(self, url: str, period: float = 1.0) -> None:
        self.url = url
        self.period = period
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.period
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    body = response.read()
            except OSError:
                self.errors += 1  # the relay is not listening yet at the very start
                continue
            self.durations.append(time.perf_counter() - start)
            self.sizes.append(len(body))

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run(workdir: Path, tag: str, sites: int, rate: float, duration: float, warmup: float, scrape: bool) -> dict:  # type: ignore[type-arg]
    site_port = port_block(sites, 26000)  # run_all.py (helper-4) uses 20000 and up, maybe at the same time
    extra = port_block(2, site_port + sites, range(site_port, site_port + sites))
    config = workdir / f"{tag}.relay.yaml"
    config.write_text(relay_yaml(sites, site_port, extra, extra + 1, (12, 8)))
    pid_file = workdir / f"{tag}.pid"
    log = workdir / f"{tag}.loadgen.log"
    argv = [sys.executable, "-m", "bench.loadgen", "steady", "--sites", str(sites),
            "--site-port", str(site_port), "--bmi-port", str(extra), "--rate", str(rate),
            "--duration", str(duration), "--warmup", str(warmup), "--watch-pid-file", str(pid_file)]  # fmt: skip
    relay_argv = [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", str(config)]
    with contextlib.ExitStack() as stack:
        loadgen = start_loadgen(stack, argv, log, tag)
        relay = stack.enter_context(started(relay_argv, workdir / f"{tag}.relay.log"))
        pid_file.with_suffix(".tmp").write_text(str(relay.pid))
        pid_file.with_suffix(".tmp").rename(pid_file)
        scraper = Scraper(f"http://{HOST}:{extra + 1}/metrics")
        with scraper if scrape else contextlib.nullcontext():
            out, _ = loadgen.communicate(timeout=RUN_TIMEOUT)
        if relay.poll() is not None:
            raise RuntimeError(f"{tag}: relay exited: {(workdir / f'{tag}.relay.log').read_text()[-2000:]}")
    result: dict = json.loads(out)  # type: ignore[type-arg]
    result["scrapes"] = {
        "count": len(scraper.durations),
        "errors": scraper.errors,
        "duration_ms_median": statistics.median(scraper.durations) * 1e3 if scraper.durations else None,
        "duration_ms_max": max(scraper.durations) * 1e3 if scraper.durations else None,
        "bytes": scraper.sizes[-1] if scraper.sizes else None,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="ASDU/s per site")
    parser.add_argument("--pairs", type=int, default=None)
    args = parser.parse_args()
    pairs = args.pairs or (1 if args.quick else 3)
    duration, warmup = (6.0, 1.0) if args.quick else (20.0, 3.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scrape-stall-") as tmp:
        for n in range(pairs):
            for scrape in (False, True):
                tag = f"{n}-{'scraped' if scrape else 'quiet'}"
                print(f"[{time.strftime('%H:%M:%S')}] {tag}", flush=True)
                result = run(Path(tmp), tag, args.sites, args.rate, duration, warmup, scrape)
                rows.append({"scraped": scrape, **result})
    print(f"\n{args.sites} sites x {args.rate:g} ASDU/s, {duration:g} s per run; relay latency site -> BMI, µs")
    header = f"{'run':<10} {'n':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>8}"
    print(f"{header}  scrapes (median/max ms, bytes)")
    for row in rows:
        up = row["up"]
        s = row["scrapes"]
        scrapes = f"{s['count']} ({s['duration_ms_median']:.1f}/{s['duration_ms_max']:.1f}, {s['bytes']})" if s[
            "count"] else "-"  # fmt: skip
        print(f"{'scraped' if row['scraped'] else 'quiet':<10} {up['n']:>7} {up['p50']:>7.0f} {up['p90']:>7.0f} "
              f"{up['p99']:>7.0f} {up['p999']:>7.0f} {up['max']:>8.0f}  {scrapes}")  # fmt: skip
        if row.get("errors") or row.get("gaps"):
            print(f"           errors {row.get('errors')}, gaps {row.get('gaps')}")
    out = Path(__file__).resolve().parent / f"scrape_results_{args.sites}.json"
    out.write_text(json.dumps({"sites": args.sites, "rate": args.rate, "duration": duration, "runs": rows}, indent=1))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
