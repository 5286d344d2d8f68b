"""`concentrator relay --config` with an `mqtt:` section: the mirror starts with the
relay, connects to the broker, and its metrics come out of the relay's exporter."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import free_port
from tests.monitoring.test_cli_metrics import ROOT, scrape, wait
from tests.monitoring.test_metrics import parse

from .broker import Broker
from .test_mirror import mqtt_section


def test_relay_command_starts_the_mirror_and_exports_its_metrics(tmp_path: Path, broker: Broker) -> None:
    metrics_port = free_port()
    config = tmp_path / "concentrator.yaml"
    document = {
        "uplink": {"listen": f"127.0.0.1:{free_port()}", "allowed_peers": ["127.0.0.1"]},
        "sites": [
            {"name": "site-01", "common_addresses": [101], "endpoints": [f"127.0.0.1:{free_port()}"],
             "interruptibility": "emergency"},
        ],
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "mqtt": mqtt_section(broker, areas={}),
    }  # fmt: skip
    config.write_text(yaml.safe_dump(document))
    check = subprocess.run(
        [sys.executable, "-m", "concentrator", "check-config", str(config)], cwd=ROOT, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    relay = subprocess.Popen([sys.executable, "-m", "concentrator", "relay", "--config", str(config)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def connected() -> bool:
            text = scrape(url)
            return text is not None and parse(text).get(("concentrator_mirror_broker_connected", ())) == 1

        wait(connected, 20, "concentrator_mirror_broker_connected 1")
        samples = parse(scrape(url) or "")
        assert samples["concentrator_mirror_broker_connects_total", ()] == 1
        assert samples["concentrator_mirror_dropped_asdus_total", ()] == 0
        assert ("concentrator_mirror_published_messages_total", (("qos", "2"),)) in samples
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(15)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait(5)
    assert relay.returncode == 0, relay.stdout.read() if relay.stdout else ""
