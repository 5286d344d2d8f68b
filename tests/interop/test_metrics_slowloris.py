"""Issue 29 item 1: a slowloris on the metrics port costs the relay nothing.

The relay runs as its own process with its exporter (a child process), 12 sites stream
at 100 ASDU/s each through it to a BMI, and Prometheus-like scrapes come once a second.
First a quiet window, then the same with 3,000 attacking connections (bench/slowloris.py:
half half-open, half sending a request head one byte a second, re-opened when closed,
and at the end every one completes its request and leaves with a reset). The precise
side-by-side figures are bench/scrape_stall.py --attack (bench/SCRAPE.md); this test
checks the bounds: no traceback, one exporter thread, its memory, every legitimate
scrape answered, nothing lost (the exporter before this change, in the bench: 1,243-1,594
threads, 65-77 MiB, a traceback per released request).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trio

from bench.loadgen import descendants
from monitoring.scrape_process import Limits
from tests.helpers import wait_for
from tests.interop.test_relay_floods import HOST, connect_bmi, relay_process, stream
from tests.peers.codec_peers import QueueingStation, counter_of

ROOT = Path(__file__).resolve().parents[2]
SITES = 12
RATE = 100.0  # ASDU/s per site
ATTACKERS = 3000
ATTACKER = "127.0.0.2"  # another host, as seen by the exporter; the scrapes come from 127.0.0.1
WINDOW = 5.0  # seconds measured, quiet and attacked
# The stated bounds on the exporter process during the attack: one thread (one trio loop),
# and resident memory (it idles at about 35 MiB; the old one reached 96-98 MB).
EXPORTER_THREADS = 1
EXPORTER_RSS_MIB = 60.0


def status(pid: int) -> tuple[int, float]:
    """(threads, resident MiB) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def timed_scrape(url: str) -> tuple[float, int]:
    """Seconds a whole scrape took (Prometheus's default scrape timeout: 10 s), and its size."""
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return time.monotonic() - start, len(body)


async def scrapes(url: str, seconds: float) -> list[float]:
    """One scrape a second for `seconds`; each one's duration (a failure raises)."""
    durations = []
    with trio.move_on_after(seconds):
        while True:
            took, size = await trio.to_thread.run_sync(timed_scrape, url)
            assert size > 10_000
            durations.append(took)
            await trio.sleep(max(0.0, 1.0 - took))
    return durations


async def watch(pid: int, seconds: float, peak: dict[str, float]) -> None:
    with trio.move_on_after(seconds):
        while True:
            threads, rss = status(pid)
            peak["threads"] = max(peak.get("threads", 0), threads)
            peak["rss"] = max(peak.get("rss", 0.0), rss)
            await trio.sleep(0.1)


async def test_a_slowloris_on_the_metrics_port_costs_the_relay_nothing():
    sent: dict[tuple[int, int], float] = {}
    peak: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        stations = [QueueingStation(101 + n) for n in range(SITES)]
        ports = [await nursery.start(s.serve) for s in stations]
        async with relay_process(ports) as relay:
            url = f"http://{HOST}:{relay.metrics_port}/metrics"
            (exporter,) = descendants(relay.process.pid)
            master = await connect_bmi(nursery, relay.uplink_port)
            await wait_for(lambda: relay.sample("concentrator_site_up", site="site-12") == 1, what="started")
            nursery.start_soon(stream, stations, RATE, sent)
            await trio.sleep(1)  # warm up
            quiet_from = trio.current_time()
            quiet_scrapes = await scrapes(url, WINDOW)
            quiet_to = trio.current_time()
            quiet_exporter = status(exporter)
            attacker = subprocess.Popen(
                [sys.executable, "-m", "bench.slowloris", "--port", str(relay.metrics_port),
                 "--connections", str(ATTACKERS), "--duration", str(WINDOW + 3), "--source", ATTACKER],
                cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=lambda: os.nice(19),  # its CPU is another host's
            )  # fmt: skip
            try:
                await trio.sleep(1.5)  # the attack at full strength
                attack_from = trio.current_time()
                nursery.start_soon(watch, exporter, WINDOW + 3, peak)
                attack_scrapes = await scrapes(url, WINDOW)
                attack_to = trio.current_time()
                open_during = await trio.to_thread.run_sync(relay.sample, "concentrator_exporter_connections")
                out, _ = await trio.to_thread.run_sync(lambda: attacker.communicate(timeout=60))
            finally:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
            summary = json.loads(out)
            await trio.sleep(1.0)  # the released requests met by the exporter
            after = relay.metrics()
            refused = relay.sample("concentrator_exporter_closed_connections_total", outcome="refused_peer")
            gone = relay.sample("concentrator_exporter_closed_connections_total", outcome="client_gone")
            for n in range(SITES):
                assert relay.sample("concentrator_site_connections_total", site=f"site-{n + 1:02d}") == 1
            log = relay.log.read_text()
        nursery.cancel_scope.cancel()
    arrived = {counter_of(asdu): at for at, asdu in master.received}
    quiet = [arrived[key] - at for key, at in sent.items() if quiet_from <= at < quiet_to and key in arrived]
    attack = [arrived[key] - at for key, at in sent.items() if attack_from <= at < attack_to and key in arrived]
    p99 = statistics.quantiles(quiet, n=100)[98], statistics.quantiles(attack, n=100)[98]
    # fmt: off
    print(f"\nslowloris: {summary}; exporter reset {refused:.0f} over the per-address limit, {gone:.0f} gone; "
          f"exporter peak "
          f"{peak['threads']:.0f} threads, {peak['rss']:.1f} MiB (quiet {quiet_exporter[0]}, "
          f"{quiet_exporter[1]:.1f} MiB), {open_during:.0f} connections open during the attack; "
          f"scrapes quiet median {statistics.median(quiet_scrapes) * 1e3:.0f} ms, "
          f"attacked median {statistics.median(attack_scrapes) * 1e3:.0f} / max {max(attack_scrapes) * 1e3:.0f} ms; "
          f"good sites p50 {statistics.median(quiet) * 1e3:.2f} / {statistics.median(attack) * 1e3:.2f} ms, "
          f"p99 {p99[0] * 1e3:.2f} / {p99[1] * 1e3:.2f} ms (quiet / attacked); {len(log.splitlines())} log lines")
    # fmt: on
    assert summary["opened"] >= ATTACKERS and refused >= ATTACKERS / 2  # the attack was real
    assert len(quiet) > 0.95 * WINDOW * SITES * RATE and len(attack) > 0.95 * WINDOW * SITES * RATE  # none lost
    assert len(attack_scrapes) >= 3  # a legitimate scrape still answers, every time
    assert peak["threads"] <= EXPORTER_THREADS and peak["rss"] < EXPORTER_RSS_MIB
    # Tasks: one per open connection, at most 8 of them the attacker's (Limits.max_per_peer).
    assert open_during <= Limits().max_per_peer + 2, open_during
    assert "concentrator_exporter_connections" in after
    assert "Traceback" not in log and "Error" not in log, log[-3000:]
    assert len(log.splitlines()) < 20
    # The latency itself is judged in bench/scrape_stall.py --attack (pairs, 20 s runs): one
    # 5 s window's p99 on this shared machine is at the mercy of any stall of any process
    # (runs without an attack showed a p99 of 59 ms and a max of 284 ms too). Here only a
    # median, which such a stall does not move, as the I-frame flood test does.
    # The attacker runs niced: on the appliance its CPU would be another host's, and on
    # this shared 2-core machine it would otherwise compete with the peers measuring.
    assert statistics.median(attack) < 3 * statistics.median(quiet) + 0.001
