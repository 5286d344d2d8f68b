"""A connect/close flood from refused addresses while 12 sites stream (issue 19, item 3).

    python -m bench run refused_flood                      # 200,000 connections from 40 sources
    python -m bench run refused_flood --connections 20000  # (from the checkout's root)

The relay runs as its own process (`python -m concentrator relay`) and allows only
127.0.0.1; twelve UPDCs (`QueueingStation`, 50 ASDU/s each) and the BMI (`CodecMaster`
on 127.0.0.1) run in this process under trio. A separate process opens and closes
`--connections` TCP connections to the relay from 127.0.0.2 .. 127.0.0.41 as fast as it
can. Reported: whether the relay lived, its CPU time and resident memory before and
after, the connections refused (its metrics), the flood's rate, and the BMI's receive
rate before, during and after the flood (it must not drop).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from bench.common import percentile
from concentrator.iec104.link import LinkParams
from tests.peers.codec_peers import CodecMaster, QueueingStation

HOST = "127.0.0.1"
SOURCES = 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def flood(port: int, connections: int, result: Any) -> None:
    """Connect and close, round robin over the source addresses (runs in its own process)."""
    start, failed = time.monotonic(), 0
    for n in range(connections):
        sock = socket.socket()
        try:
            sock.bind((f"127.0.0.{2 + n % SOURCES}", 0))
            sock.connect((HOST, port))
        except OSError:
            failed += 1  # a reset during the handshake counts here
        finally:
            sock.close()
    result["seconds"] = time.monotonic() - start
    result["connect_errors"] = failed


def proc_figures(pid: int) -> dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / ticks, "rss_mib": int(rss.split()[1]) / 1024}


def refused(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("concentrator_uplink_refused_connections_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


async def scenario(connections: int, sites: int, rate: float) -> dict[str, Any]:
    stations = [QueueingStation(101 + n) for n in range(sites)]
    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(station.serve) for station in stations]
        uplink_port, metrics_port = _free_port(), _free_port()
        lines = ["uplink:", f'  listen: "{HOST}:{uplink_port}"', f'  allowed_peers: ["{HOST}"]', "sites:"]
        for n, port in enumerate(ports):
            lines += [
                f"  - name: site-{n + 1:02d}",
                f"    common_addresses: [{101 + n}]",
                f'    endpoints: ["{HOST}:{port}"]',
                "    interruptibility: instantaneous",
            ]
        lines += ["metrics:", f'  listen: "{HOST}:{metrics_port}"']
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        relay = subprocess.Popen(
            [sys.executable, "-m", "concentrator", "--log-level", "ERROR", "relay", "--config", f.name],
            start_new_session=True,
        )
        try:
            master = CodecMaster(LinkParams(t2=0.2))
            await master.run_started(nursery, HOST, uplink_port)

            async def stream(station: QueueingStation) -> None:
                while True:
                    station.enqueue_counter()
                    await trio.sleep(1 / rate)

            for station in stations:
                nursery.start_soon(stream, station)

            async def rate_over(seconds: float) -> float:
                before = len(master.received)
                await trio.sleep(seconds)
                return (len(master.received) - before) / seconds

            await trio.sleep(2)
            before = proc_figures(relay.pid)
            rate_before = await rate_over(5)
            shared = multiprocessing.Manager().dict()
            flooder = multiprocessing.Process(target=flood, args=(uplink_port, connections, shared))
            flooder.start()
            rates_during = []
            while flooder.is_alive():
                rates_during.append(await rate_over(2))
            flooder.join()
            rate_after = await rate_over(5)
            after = proc_figures(relay.pid)
            result = {
                "connections": connections,
                "sources": SOURCES,
                "flood_seconds": shared.get("seconds"),
                "flood_connect_errors": shared.get("connect_errors"),
                "relay_alive": relay.poll() is None,
                "refused_by_reason": refused(metrics_port),
                "relay_before": before,
                "relay_after": after,
                "bmi_asdu_per_s_before": rate_before,
                "bmi_asdu_per_s_during_min": min(rates_during) if rates_during else None,
                "bmi_asdu_per_s_during_median": percentile(rates_during, 50) if rates_during else None,
                "bmi_asdu_per_s_after": rate_after,
                "offered_asdu_per_s": sites * rate,
            }
        finally:
            if relay.poll() is None:
                os.killpg(relay.pid, signal.SIGTERM)
                relay.wait(10)
            os.unlink(f.name)
        nursery.cancel_scope.cancel()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200_000)
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--rate", type=float, default=50.0, help="ASDU/s each site sends")
    args = parser.parse_args()
    result = trio.run(scenario, args.connections, args.sites, args.rate)
    print(json.dumps(result, indent=2))
    return 0 if result["relay_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
