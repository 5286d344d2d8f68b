"""Does scraping the relay's metrics stall it? Relay latency with and without a scrape
of /metrics every second.

    python -m bench run scrape_stall               # 3 pairs of 20 s runs, 100 sites x 10 ASDU/s
    python -m bench run scrape_stall --quick       # 1 pair of 6 s runs
    python -m bench run scrape_stall --attack      # 12 sites x 100 ASDU/s, scraped, without and with a slowloris
    python -m bench run scrape_stall --attack --before-tree DIR   # the same, the relay from DIR alongside

(from the checkout's root)

Each run is the relay as its own process (`python -m concentrator relay`, which serves
its metrics on metrics.listen) driven by the load generator (bench.loadgen,
steady: every site sends stamped ASDUs, the BMI measures each one's latency). In the
"scraped" runs a thread here GETs /metrics every second for the whole run, as Prometheus
would, and times each scrape. Runs alternate (off, on, off, on, ...) so that the load
other processes put on the machine falls on both alike. Results go to stdout as a table
and to bench/results/DATE-scrape-<sites>.json (DATE-scrape-attack.json with --attack);
bench/SCRAPE.md has the recorded figures.

With --attack (issue 29) every run is scraped, and the pair is "scraped" and "attacked":
in the attacked run bench.slowloris holds 3,000 connections to the metrics port from
another address (127.0.0.2; half half-open, half sending a request head a byte a second,
re-opened when closed, all completed and reset at the end) for the whole run. Each run
also records the exporter process's peak threads and memory, its CPU and the attacker's,
and the tracebacks in the relay's log. --before-tree DIR adds the same pair with the
relay (and its exporter) from another source tree, e.g. main before the change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import percentile, result_path
from bench.loadgen import cpu_seconds, descendants
from bench.run_all import HOST, port_block, relay_yaml, start_loadgen, started

RUN_TIMEOUT = 180
ATTACKER = "127.0.0.2"  # the slowloris's address: not the scraper's
ATTACKERS = 3000


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


class Watcher:
    """Samples the relay's exporter (its child process) every 0.1 s on a thread: peak
    threads and resident memory, and CPU seconds used over the run."""

    def __init__(self, relay_pid: int) -> None:
        self.relay_pid = relay_pid
        self.threads = 0
        self.rss_mib = 0.0
        self.cpu_s = 0.0
        self._start_cpu: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in descendants(self.relay_pid):
                try:
                    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                    cpu = cpu_seconds(pid)
                    threads, rss = int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024
                except (OSError, ValueError, KeyError):  # gone, or exiting (no VmRSS any more)
                    continue
                self.threads = max(self.threads, threads)
                self.rss_mib = max(self.rss_mib, rss)
                if self._start_cpu is None:
                    self._start_cpu = cpu
                self.cpu_s = cpu - self._start_cpu

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run(workdir: Path, tag: str, sites: int, rate: float, duration: float, warmup: float, scrape: bool,  # type: ignore[type-arg]
        attack: bool = False, tree: Path | None = None) -> dict:  # fmt: skip
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
        relay = stack.enter_context(started(relay_argv, workdir / f"{tag}.relay.log", tree))
        pid_file.with_suffix(".tmp").write_text(str(relay.pid))
        pid_file.with_suffix(".tmp").rename(pid_file)
        scraper = Scraper(f"http://{HOST}:{extra + 1}/metrics")
        watcher = Watcher(relay.pid)
        attacker = None
        if attack:
            attack_argv = [sys.executable, "-m", "bench.slowloris", "--port", str(extra + 1), "--source", ATTACKER,
                           "--connections", str(ATTACKERS), "--duration", str(duration + warmup + 1)]  # fmt: skip
            attacker = stack.enter_context(started(attack_argv, workdir / f"{tag}.attack.log"))
        with scraper if scrape else contextlib.nullcontext(), watcher:
            out, _ = loadgen.communicate(timeout=RUN_TIMEOUT)
            attacker_cpu = cpu_seconds(attacker.pid) if attacker is not None else 0.0
        if attacker is not None:
            attacker.wait(RUN_TIMEOUT)
            time.sleep(1.0)  # the released requests reach the exporter
        if relay.poll() is not None:
            raise RuntimeError(f"{tag}: relay exited: {(workdir / f'{tag}.relay.log').read_text()[-2000:]}")
    relay_log = (workdir / f"{tag}.relay.log").read_text()
    result: dict = json.loads(out)  # type: ignore[type-arg]
    result["exporter"] = {"threads_peak": watcher.threads, "rss_mib_peak": round(watcher.rss_mib, 1),
                          "cpu_s": round(watcher.cpu_s, 2), "attacker_cpu_s": round(attacker_cpu, 2),
                          "relay_log_lines": len(relay_log.splitlines()),
                          "tracebacks": relay_log.count("Traceback")}  # fmt: skip
    if not result.get("up", {}).get("n"):  # nothing measured: keep what the relay said
        result["relay_log_tail"] = relay_log[-3000:]
        result["loadgen_log_tail"] = log.read_text()[-3000:]
    if attack:
        result["attack"] = json.loads((workdir / f"{tag}.attack.log").read_text().strip().splitlines()[-1])
    result["scrapes"] = {
        "count": len(scraper.durations),
        "errors": scraper.errors,
        "duration_ms_median": percentile(scraper.durations, 50) * 1e3 if scraper.durations else None,
        "duration_ms_max": max(scraper.durations) * 1e3 if scraper.durations else None,
        "bytes": scraper.sizes[-1] if scraper.sizes else None,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--attack", action="store_true", help="scraped runs without and with a slowloris")
    parser.add_argument("--before-tree", type=Path, help="also run the relay from this source tree (with --attack)")
    parser.add_argument("--sites", type=int, default=None, help="default 100, 12 with --attack")
    parser.add_argument("--rate", type=float, default=None, help="ASDU/s per site (default 10, 100 with --attack)")
    parser.add_argument("--pairs", type=int, default=None)
    args = parser.parse_args()
    sites = args.sites or (12 if args.attack else 100)
    rate = args.rate or (100.0 if args.attack else 10.0)
    pairs = args.pairs or (1 if args.quick else 3)
    duration, warmup = (6.0, 1.0) if args.quick else (20.0, 3.0)
    trees: list[tuple[str, Path | None]] = [("", None)]
    if args.before_tree:
        trees.insert(0, ("before ", args.before_tree.resolve()))
    kinds = (("scraped", True, False), ("attacked", True, True)) if args.attack else (
        ("quiet", False, False), ("scraped", True, False))  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="scrape-stall-") as tmp:
        for n in range(pairs):
            for prefix, tree in trees:
                for kind, scrape, attack in kinds:
                    tag = f"{n}-{prefix.strip() or 'after'}-{kind}"
                    print(f"[{time.strftime('%H:%M:%S')}] {tag}", flush=True)
                    result = run(Path(tmp), tag, sites, rate, duration, warmup, scrape, attack, tree)
                    rows.append({"run": prefix + kind, "scraped": scrape, "attacked": attack, **result})
    name = "attack" if args.attack else str(sites)
    out = result_path(f"scrape-{name}")
    out.write_text(json.dumps({"sites": sites, "rate": rate, "duration": duration, "runs": rows}, indent=1))
    print(f"\n{sites} sites x {rate:g} ASDU/s, {duration:g} s per run; relay latency site -> BMI, µs")
    header = f"{'run':<16} {'n':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>8}"
    print(f"{header}  scrapes (n, median/max ms, errors)  exporter (threads, MiB, CPU s)  attacker CPU s  tracebacks")
    for row in rows:
        up = row["up"]
        if not up.get("n"):
            print(f"{row['run']:<16} nothing measured: errors {row.get('errors')}")
            continue
        s = row["scrapes"]
        e = row["exporter"]
        scrapes = f"{s['count']} ({s['duration_ms_median']:.1f}/{s['duration_ms_max']:.1f}, {s['errors']})" if s[
            "count"] else "-"  # fmt: skip
        print(f"{row['run']:<16} {up['n']:>7} {up['p50']:>7.0f} {up['p90']:>7.0f} {up['p99']:>7.0f} "
              f"{up['p999']:>7.0f} {up['max']:>8.0f}  {scrapes:<34} {e['threads_peak']:>3} {e['rss_mib_peak']:>6.1f} "
              f"{e['cpu_s']:>6.2f}  {e['attacker_cpu_s']:>6.2f}  {e['tracebacks']}")  # fmt: skip
        if row.get("errors") or row.get("gaps"):
            print(f"           errors {row.get('errors')}, gaps {row.get('gaps')}")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
