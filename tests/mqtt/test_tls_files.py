"""The mirror's TLS files checked when the configuration is loaded (and by
`concentrator check-config`): each problem named with its key and what is wrong."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from concentrator.config import ConfigError
from tests.helpers import free_port, wait_for
from tests.peers.codec_peers import CodecMaster, QueueingStation

from .broker import Pki
from .test_mirror_units import config_with

ROOT = Path(__file__).parents[2]


def with_tls(files: dict[str, Any], **change: str) -> dict[str, Any]:
    return {**files, "tls": {**files["tls"], **change}}


def refused(files: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        config_with(files)
    return error.value


def test_good_files_pass(files: dict[str, Any]):
    assert config_with(files).tls_dates == ()


def test_a_garbage_certificate_is_refused(files: dict[str, Any], tmp_path: Path):
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    error = refused(with_tls(files, cert_file=str(garbage)))
    assert error.key == "mqtt.tls.cert_file" and "unreadable" in str(error.got)
    error = refused(with_tls(files, key_file=str(garbage)))
    assert error.key == "mqtt.tls.key_file" and "unreadable" in str(error.got)


def test_a_key_that_is_not_the_certificates_is_refused(files: dict[str, Any], tmp_path: Path):
    _, other_key = Pki(tmp_path).issue("other")
    error = refused(with_tls(files, key_file=str(other_key)))
    assert error.key == "mqtt.tls.key_file" and "does not match" in str(error.got)


def test_a_certificate_of_another_ca_is_refused(files: dict[str, Any], tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    cert, key = Pki(tmp_path / "elsewhere").issue("stranger")
    error = refused(with_tls(files, cert_file=str(cert), key_file=str(key)))
    assert error.key == "mqtt.tls.cert_file" and "issued by CN=test CA" in str(error.got)
    assert "a CA in" in error.expected
    # A leaf certificate where the CA should be.
    error = refused(with_tls(files, ca_file=files["tls"]["cert_file"]))
    assert error.key == "mqtt.tls.ca_file" and "not a CA certificate" in str(error.got)


def test_an_expired_certificate_is_a_warning_and_the_relay_starts_and_relays(
    files: dict[str, Any],
    tmp_path: Path,
):
    """docs/mqtt.md: relaying must not stop because the mirror's certificate expired.
    check-config warns and exits 0 (the service's ExecStartPre runs it); the relay
    starts, logs it as an error and forwards a site's data to the BMI."""
    (tmp_path / "old").mkdir()
    pki = Pki(tmp_path / "old")
    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    cert, key = pki.issue("late", not_after=expired)
    shutil.copy(pki.ca, tmp_path / "old-ca.crt")
    mqtt = with_tls(files, ca_file=str(tmp_path / "old-ca.crt"), cert_file=str(cert), key_file=str(key))
    # Loading does not refuse it (the relay must relay even when the mirror cannot)...
    [problem] = config_with(mqtt).tls_dates
    assert problem.startswith("mqtt.tls.cert_file: expected a certificate valid now, got CN=late expired on")
    # ...check-config says so, as a warning...
    uplink_port, site_port = free_port(), free_port()
    document = {
        "uplink": {"listen": f"127.0.0.1:{uplink_port}", "allowed_peers": ["127.0.0.1"]},
        "sites": [{"name": "site-01", "common_addresses": [101], "endpoints": [f"127.0.0.1:{site_port}"],
                   "interruptibility": "emergency"}],
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "mqtt": mqtt,
    }  # fmt: skip
    config = tmp_path / "concentrator.yaml"
    config.write_text(yaml.safe_dump(document))
    check = subprocess.run([sys.executable, "-m", "concentrator", "check-config", str(config)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "warning: mqtt.tls.cert_file" in check.stderr and "CN=late expired on" in check.stderr
    # ...and the relay runs with it: a site's ASDU reaches the BMI.
    trio.run(_relays_with, config, site_port, uplink_port, tmp_path / "relay.log")
    log = (tmp_path / "relay.log").read_text()
    assert "ERROR" in log and "CN=late expired on" in log, log


async def _relays_with(config: Path, site_port: int, uplink_port: int, log: Path) -> None:
    station = QueueingStation(101)
    master = CodecMaster()
    with open(log, "wb") as out:
        relay = await trio.lowlevel.open_process(
            [sys.executable, "-m", "concentrator", "relay", "--config", str(config)], cwd=ROOT, stdout=out,
            stderr=out,
        )  # fmt: skip
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(station.serve, site_port)
            await master.run_started(nursery, "127.0.0.1", uplink_port)
            station.enqueue_counter()
            await wait_for(lambda: len(master.received) == 1, 20, "the site's ASDU at the BMI")
            assert relay.returncode is None
            nursery.cancel_scope.cancel()
    finally:
        relay.terminate()
        with trio.move_on_after(10):
            await relay.wait()
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
