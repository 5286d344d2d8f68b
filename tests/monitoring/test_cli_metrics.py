"""`concentrator relay` serves its metrics on metrics.listen, from a process of its own
that goes away with the relay."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import free_port
from tests.monitoring.test_metrics import parse

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def wait(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_relay_serves_metrics_and_its_exporter_stops_with_it(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = tmp_path / "concentrator.yaml"
    config.write_text(
        f'uplink: {{listen: "127.0.0.1:{free_port()}", allowed_peers: ["127.0.0.1"]}}\n'
        f'sites:\n  - {{name: site-01, common_addresses: [101], endpoints: ["127.0.0.1:{free_port()}"], '
        f"interruptibility: emergency}}\n"
        f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\n'
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    relay = subprocess.Popen([sys.executable, "-m", "concentrator", "relay", "--config", str(config)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        text = wait(lambda: scrape(url), 20, "the metrics endpoint")
        samples = parse(text)
        sha256 = hashlib.sha256(config.read_bytes()).hexdigest()
        assert samples["concentrator_config_info", (("file", str(config)), ("sha256", sha256))] == 1
        assert samples["concentrator_site_up", (("site", "site-01"),)] == 0  # the site is not there
        assert samples["concentrator_uplink_started", ()] == 0
        # Read-only: nothing but GET /metrics.
        request = urllib.request.Request(url, data=b"x", method="POST")
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("POST accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 405  # Method Not Allowed
    finally:
        relay.send_signal(signal.SIGTERM)
        output = relay.communicate(timeout=20)[0].decode()
    assert relay.returncode == 0, output
    assert f"metrics on {url}" in output
    wait(lambda: scrape(url) is None, 5, "the exporter to go away with the relay")
