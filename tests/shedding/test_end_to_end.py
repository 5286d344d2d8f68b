"""End to end: 12 simulated UPDCs (own codec) through the real relay to a BMI; 4 sites shed,
one of them misbehaving; the monitor process records and judges; `concentrator shedding
report` names exactly that site and reason, the other three pass."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from concentrator.cli import feature_relay
from concentrator.config import parse_config
from concentrator.shedding.record import integrity
from concentrator.sim.points import breaker_command, release_command
from tests.helpers import free_port
from tests.peers.codec_peers import CodecMaster
from tests.peers.shedding_site import Misbehaviour, SheddingSite


def scrape(url: str) -> dict[str, dict[str, float]]:
    """{metric: {site label or "": value}} from a real scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels.get("site", "")] = sample.value
    return found


PERIOD = 0.5  # seconds per sample (annex: 4 s), so that the test takes seconds
SHED = (102, 105, 108, 111)
BAD = 108


def config(ports: list[int], database: Path):
    sites = [{"name": f"site-{i + 1:02d}", "common_addresses": [101 + i], "endpoints": [f"127.0.0.1:{port}"],
              "interruptibility": "emergency"} for i, port in enumerate(ports)]  # fmt: skip
    return parse_config({
        "uplink": {"listen": f"127.0.0.1:{free_port()}", "allowed_peers": ["127.0.0.1"]},
        "sites": sites,
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "shedding": {
            "database": str(database), "sample_period": PERIOD, "metrics_listen": f"127.0.0.1:{free_port()}",
            "points": {"total_power": 1001, "loads": [1002, 1003], "breakers": [2001], "breaker_command": 3001,
                       "lock": 2002, "release_command": 3002},
            "sites": {s["name"]: {"contractual_kw": 2000, "interruptible_kw": 700} for s in sites},
        },
    }, "<test>")  # fmt: skip


async def play(tmp_path: Path, misbehave: str) -> None:
    sims = {101 + i: SheddingSite(101 + i, sample_period=PERIOD) for i in range(12)}
    if misbehave == "reconnect":  # 300 kW back 1 s after the opening
        sims[BAD].misbehaviour = Misbehaviour(reconnect_kw=300.0, reconnect_after=1.0)
    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(sim.run) for sim in sims.values()]
        relay = feature_relay(config(ports, tmp_path / "record.sqlite"))
        await nursery.start(relay.run)
        bmi = CodecMaster()
        await nursery.start(bmi.run, "127.0.0.1", relay.listen_port)
        with trio.fail_after(10):
            await bmi.started.wait()
            while {a[4] | a[5] << 8 for a in bmi.asdus()} < set(sims):  # every site's samples arrive
                await trio.sleep(0.05)
        await trio.sleep(3 * PERIOD)
        for ca in SHED:  # select, then execute: open
            bmi.send(breaker_command(ca, False, select=True))
            bmi.send(breaker_command(ca, False))
        await trio.sleep(1.0)
        if misbehave == "invalid":
            sims[BAD].misbehaviour.invalid_quality = True
        await trio.sleep(6.0)  # samples count from the command + 5 s (emergency sites' opening time allowed)
        # Live, from the monitor process's own metrics port: who is shed, who fails now.
        listen = relay.config.shedding.metrics_listen
        live = await trio.to_thread.run_sync(scrape, f"http://{listen.host}:{listen.port}/metrics")
        shed_names = {f"site-{ca - 100:02d}" for ca in SHED}
        assert {s for s, v in live["concentrator_shedding_site_in_event"].items() if v == 1} == shed_names
        assert {s for s, v in live["concentrator_shedding_site_compliant"].items() if v == 0} == {"site-08"}
        assert live["concentrator_shedding_event_in_progress"] == {"": 1.0}
        for ca in SHED:
            bmi.send(release_command(ca, select=True))
            bmi.send(release_command(ca))
        await trio.sleep(1.5)  # the monitor writes every 0.25 s
        assert all(not sims[ca].closed and not sims[ca].locked for ca in SHED)
        assert all(sims[ca].closed for ca in sims if ca not in SHED)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("misbehave", "reason"), [("reconnect", "power_above_band"), ("invalid", "measure_invalid")])
def test_report_names_exactly_the_misbehaving_site(tmp_path: Path, misbehave: str, reason: str) -> None:
    trio.run(play, tmp_path, misbehave)
    database = tmp_path / "record.sqlite"
    assert integrity(str(database)) == "ok"
    run = subprocess.run([sys.executable, "-m", "concentrator", "shedding", "report", "--db", str(database),
                          "--html", str(tmp_path / "pages")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    print(out)
    assert out.count("event ") == 1 and "event 1:" in out
    assert "sites site-02, site-05, site-08, site-11" in out
    site_lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  site-")}
    assert set(site_lines) == {"site-02", "site-05", "site-08", "site-11"}
    for name, line in site_lines.items():
        assert ("FAIL" if name == "site-08" else "PASS") in line, line
    failures = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert len(failures) == 1 and failures[0].startswith(f"{reason}:"), failures
    assert "aggregate: FAIL: sites site-08" in out
    page = (tmp_path / "pages" / "shedding-event-1.html").read_text()
    assert page.count("<svg") == 5 and "site-08 (FAIL: " + reason in page
