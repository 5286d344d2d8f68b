"""Smoke test of the benchmarks' load generator (a few seconds): its sites and BMI talk
directly and through the relay process, measure latency, and lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from bench.loadgen import BmiEndpoint, LoadGen, read_stamped, stamped_asdu

SITES = 3


def free_block(count: int, start: int = 23000) -> int:
    """`count` consecutive free loopback ports (below the ephemeral range)."""
    first = start
    while first + count < 32768:
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            first += count
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free ports")


async def _run(gen: LoadGen) -> tuple[dict, dict]:  # type: ignore[type-arg]
    try:
        await gen.listen()
        await gen.ready(timeout=20)
        steady = await gen.steady(rate=50, duration=0.6, warmup=0.2, command_rate=10)
        storm = await gen.storm(repeats=1, timeout=20)
        return steady, storm
    finally:
        await gen.close()


def _check(gen: LoadGen, steady: dict, storm: dict) -> None:  # type: ignore[type-arg]
    assert gen.errors == []
    assert steady["sent"] > 0 and steady["received"] == steady["sent"]
    assert steady["gaps"] == 0 and steady["duplicates"] == 0
    for key in ("up", "down", "select_rtt", "execute_term_rtt"):
        assert steady[key]["n"] > 0 and 0 < steady[key]["p50"] < 1e6, key  # µs, below a second
    (run,) = storm["runs"]
    assert run["asdus"] == SITES * (gen.storm_objects + 2) and run["asdus_per_s"] > 0
    assert run["sites_differing"] == 0


def test_stamped_asdu_round_trip():
    asdu = stamped_asdu(ca=4242, cause=3, ioa=1000, sequence=7, sent_ns=123_456_789_012_345)
    assert len(asdu) == 24 and asdu[0] == 7 and asdu[4] | asdu[5] << 8 == 4242
    assert read_stamped(asdu) == (3, 4242, 7, 123_456_789_012_345)


def test_direct_sites_and_bmi_measure_and_lose_nothing():
    port = free_block(SITES)
    gen = LoadGen(sites_count=SITES, site_port=port, bmi_port=port, per_site_bmi=True, storm_objects=20)
    steady, storm = asyncio.run(_run(gen))
    _check(gen, steady, storm)


def test_through_the_relay_process(tmp_path: Path):
    port = free_block(SITES + 2)
    sites = "".join(
        f'  - {{name: s{i}, common_addresses: [{101 + i}], endpoints: ["127.0.0.1:{port + i}"],'
        f" interruptibility: instantaneous}}\n"
        for i in range(SITES)
    )
    config = tmp_path / "relay.yaml"
    config.write_text(
        f'uplink: {{listen: "127.0.0.1:{port + SITES}", allowed_peers: ["127.0.0.1"]}}\n'
        f"sites:\n{sites}"
        f'metrics: {{listen: "127.0.0.1:{port + SITES + 1}"}}\n'
    )
    gen = LoadGen(sites_count=SITES, site_port=port, bmi_port=port + SITES, per_site_bmi=False, storm_objects=20)

    async def scenario() -> tuple[dict, dict]:  # type: ignore[type-arg]
        await gen.listen()  # the sites listen before the relay starts connecting
        relay = subprocess.Popen(
            [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", str(config)],
            start_new_session=True,
        )
        try:
            await gen.ready(timeout=20)
            steady = await gen.steady(rate=50, duration=0.6, warmup=0.2, command_rate=10)
            storm = await gen.storm(repeats=1, timeout=20)
            return steady, storm
        finally:
            await gen.close()
            os.killpg(relay.pid, signal.SIGKILL)
            relay.wait(5)

    steady, storm = asyncio.run(scenario())
    _check(gen, steady, storm)


def test_storm_check_tells_altered_lost_and_reordered_answers_apart():
    """The storm's per-site CRC-32 says equal only for the same bytes in the same order."""
    gen = LoadGen(sites_count=1, site_port=1, bmi_port=1, per_site_bmi=False)
    (site,) = gen.sites
    bmi = BmiEndpoint(gen)
    cases = {
        "intact": lambda a: a,
        "reordered": lambda a: [a[1], a[0], a[2]],
        "lost": lambda a: a[:2],
        "altered": lambda a: [a[0], a[1][:-1] + b"\x80", a[2]],  # QDS of the last element
    }
    verdict = {}
    for name, change in cases.items():
        site.storm_sent_crc = site.storm_received_crc = 0
        sent = [site.storm_asdu(1001 + n) for n in range(3)]
        for asdu in change(sent):
            bmi.on_asdu(asdu, 0)
        verdict[name] = site.storm_sent_crc == site.storm_received_crc
    assert verdict == {"intact": True, "reordered": False, "lost": False, "altered": False}
