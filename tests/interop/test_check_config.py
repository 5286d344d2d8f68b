"""`concentrator check-config` binds every listen address the appliance will use, then
releases it: a busy or foreign address fails there, with the key and the reason, instead
of stopping the relay (or the link manager's metrics) at start."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from concentrator.cli import check_installed, check_listeners, main
from concentrator.config import ConfigError, load_config
from concentrator.configbase import AddressInUse, MissingTool
from tests.helpers import free_port
from tests.mqtt.broker import Pki

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "concentrator.yaml"


def document(uplink: str, metrics: str, netd_metrics: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    doc["uplink"]["listen"] = uplink
    doc["metrics"]["listen"] = metrics
    if netd_metrics is None:
        doc["network"].pop("metrics_listen", None)
    else:
        doc["network"]["metrics_listen"] = netd_metrics
    return doc


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "concentrator.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture
def busy() -> Iterator[socket.socket]:
    """A listening socket on a loopback port, as a relay already running would hold."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concentrator", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_free_addresses_pass_and_are_released(tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    path = write(tmp_path, document(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "valid, 12 sites" in result.stdout
    for port in ports:  # released: each can be listened on again
        socket.create_server(("127.0.0.1", port)).close()


def test_a_busy_uplink_fails_with_the_reason(tmp_path: Path, busy: socket.socket) -> None:
    port = busy.getsockname()[1]
    path = write(tmp_path, document(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
    result = check_config(path)
    assert result.returncode == 3  # README, "Exit statuses"
    assert result.stderr.strip() == (
        f"{path}: uplink.listen: listening on 127.0.0.1:{port} failed: Address already in use "
        "(another process holds it); stop that process or choose another port"
    )


def test_a_wildcard_uplink_on_a_busy_port_fails(tmp_path: Path, busy: socket.socket) -> None:
    port = busy.getsockname()[1]
    config = load_config(write(tmp_path, document(f"0.0.0.0:{port}", f"127.0.0.1:{free_port()}")))
    with pytest.raises(AddressInUse) as info:
        check_listeners(config)
    assert info.value.where.endswith(": uplink.listen") and "Address already in use" in info.value.problem


def with_ha(doc: dict[str, Any], virtual: str, ha_metrics: str) -> dict[str, Any]:
    """An appliance of an HA pair: the relay listens on the uplink's virtual address."""
    doc["uplink"]["listen"] = f"{virtual}:{free_port()}"
    doc["ha"] = {
        "node": "conc-a", "priority": 150, "virtual_router_id": 51, "advert_interval": 0.1, "preempt": "never",
        "uplink": {"interface": "bmi0", "virtual_address": f"{virtual}/24", "peer": "192.0.2.12"},
        "sites": {"interface": "lan0", "virtual_address": "198.51.100.10/24", "peer": "198.51.100.12"},
        "metrics_listen": ha_metrics,
    }  # fmt: skip
    return doc


def test_an_ha_virtual_address_not_held_here_passes_but_a_foreign_one_does_not(tmp_path: Path) -> None:
    # The standby does not hold the virtual address: its port is checked, not the address.
    doc = with_ha(document("127.0.0.1:1", f"127.0.0.1:{free_port()}"), "192.0.2.10", f"127.0.0.1:{free_port()}")
    result = check_config(write(tmp_path, doc))
    assert result.returncode == 0, result.stderr
    # Any other address this host does not have still fails: here the HA metrics.
    doc["ha"]["metrics_listen"] = f"192.0.2.99:{free_port()}"
    result = check_config(write(tmp_path, doc))
    assert result.returncode == 4
    assert ": ha.metrics_listen: listening on 192.0.2.99:" in result.stderr


def test_a_foreign_metrics_address_fails_with_the_reason(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: on no interface of this host.
    path = write(tmp_path, document(f"127.0.0.1:{free_port()}", f"192.0.2.1:{free_port()}"))
    result = check_config(path)
    assert result.returncode == 4
    assert f"{path}: metrics.listen: listening on 192.0.2.1:" in result.stderr
    assert "Cannot assign requested address" in result.stderr
    no_bind = subprocess.run(
        [sys.executable, "-m", "concentrator", "check-config", "--no-bind", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert no_bind.returncode == 0, no_bind.stderr  # for checking a file meant for another host


def test_the_link_managers_metrics_address_is_bound_too(tmp_path: Path, busy: socket.socket) -> None:
    port = busy.getsockname()[1]
    config = load_config(
        write(tmp_path, document(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"))
    )
    with pytest.raises(AddressInUse) as info:
        check_listeners(config)
    assert info.value.where.endswith(": network.metrics_listen")


def test_two_processes_on_one_address_are_refused(tmp_path: Path) -> None:
    # The relay's and the link manager's metrics on the same port: all are held at once.
    port = free_port()
    config = load_config(
        write(tmp_path, document(f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}", f"127.0.0.1:{port}"))
    )
    with pytest.raises(ConfigError) as info:  # not "another process": this file, twice
        check_listeners(config)
    assert (
        info.value.key == "network.metrics_listen" and info.value.expected == "a port not also used by metrics.listen"
    )


def test_ipv6_addresses_are_bound_as_ipv6(tmp_path: Path) -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        config = load_config(write(tmp_path, document(f"[::1]:{port}", f"127.0.0.1:{free_port()}")))
        with pytest.raises(AddressInUse) as info:
            check_listeners(config)
    assert info.value.problem.startswith(f"listening on [::1]:{port} failed: ")
    check_listeners(config)  # free again once the other listener is gone


# --------------------------------------------------------------------------- health and extras


def test_health_reads_the_configured_uplink_port(tmp_path: Path, busy: socket.socket) -> None:
    port = busy.getsockname()[1]
    healthy = write(tmp_path, document(f"0.0.0.0:{port}", f"127.0.0.1:{free_port()}"))
    command = [sys.executable, "-m", "concentrator", "health", "--config", str(healthy)]
    assert subprocess.run(command, capture_output=True, timeout=60, cwd=ROOT).returncode == 0
    busy.close()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1 and f"nothing listens on port {port}" in result.stderr


def test_a_mirror_without_paho_is_named_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paho-mqtt is installed here (the tests need it): its absence is simulated.
    pki = Pki(tmp_path)  # the configuration check reads the certificates
    cert, key = pki.issue("concentrator")
    (tmp_path / "mqtt.cred").write_text("concentrator:s3cret\n")
    doc = document(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    doc["mqtt"] = {
        "broker": "[2001:db8::1]:8883",
        "tls": {"ca_file": str(pki.ca), "cert_file": str(cert), "key_file": str(key)},
        "credentials_file": str(tmp_path / "mqtt.cred"),
        "prefix": "holder/concentrator",
    }
    config = load_config(write(tmp_path, doc))
    assert config.mqtt is not None and config.mqtt.broker.host == "2001:db8::1"  # IPv6 brokers too
    check_installed(config)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "paho" else real(name, *a))
    with pytest.raises(MissingTool) as info:
        check_installed(config)
    assert info.value.where.endswith(": mqtt") and info.value.remedy == "pip install 'iec104-concentrator[mqtt]'"


def test_the_demo_without_c104_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "c104" else real(name, *a))
    assert main(["demo", "--duration", "1"]) == 5
    assert "pip install 'iec104-concentrator[demo]'" in capsys.readouterr().err


def test_a_wide_uplink_w_is_accepted_with_a_warning_and_the_figure(tmp_path: Path) -> None:
    """Issue 25: w at the sum of the sites' k (12 x 12 in the example) passes, but a few
    idle sites would make every confirmation wait for the BMI's t2: said, with the figure."""
    doc = document(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    doc["uplink"].update(k=144, w=144)
    for site in doc["sites"]:
        site["k"], site["w"] = 12, 8
    result = check_config(write(tmp_path, doc))
    assert result.returncode == 0, result.stderr
    assert "warning: uplink.w 144 is above 108" in result.stderr and "keep w at most 108" in result.stderr
    doc["uplink"]["w"] = 72
    result = check_config(write(tmp_path, doc))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
