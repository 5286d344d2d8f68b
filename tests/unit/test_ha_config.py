"""The `ha:` section (concentrator/ha/config.py) and the keepalived configuration generated
from it (concentrator/ha/keepalived.py); keepalived itself checks the generated file."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from concentrator.config import Config, ConfigError, load_config, parse_config
from concentrator.ha.keepalived import render

FILE = "pair.yaml"
EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "ha-example.yaml"

BASE: dict[str, Any] = {
    "uplink": {"listen": "192.0.2.10:2404", "allowed_peers": ["192.0.2.1"]},
    "sites": [
        {
            "name": "site-01",
            "common_addresses": [101],
            "endpoints": ["198.51.100.101:2404"],
            "interruptibility": "instantaneous",
        }
    ],
    "ha": {
        "node": "conc-a",
        "priority": 150,
        "virtual_router_id": 51,
        "advert_interval": 0.1,
        "preempt": "never",
        "uplink": {"interface": "bmi0", "virtual_address": "192.0.2.10/24", "peer": "192.0.2.12"},
        "sites": {"interface": "lan0", "virtual_address": "198.51.100.10/24", "peer": "198.51.100.12"},
    },
}


def _two_paths(d: dict[str, Any]) -> None:
    """The pair with two uplink paths (docs/ha.md): the relay on the service address,
    netd's network: section, a second uplink virtual address on bmi1."""
    d["uplink"]["listen"] = "10.0.0.1:2404"
    d["network"] = {
        "service_address": "10.0.0.1",
        "uplink": {
            "destinations": ["10.0.1.1/32"],
            "primary": {"interface": "bmi0", "gateway": "192.0.2.1"},
            "backup": {"interface": "bmi1", "gateway": "192.0.3.1"},
        },
    }
    d["ha"]["uplink"]["also"] = [{"interface": "bmi1", "virtual_address": "192.0.3.10/24"}]


def parse(mutate: Callable[[dict[str, Any]], None] | None = None) -> Config:
    data = copy.deepcopy(BASE)
    if mutate is not None:
        mutate(data)
    return parse_config(data, FILE)


def error(mutate: Callable[[dict[str, Any]], None]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(mutate)
    assert str(info.value).startswith(f"{FILE}: {info.value.key}: expected ")
    return info.value


def test_valid_section() -> None:
    ha = parse().ha
    assert ha is not None
    assert (ha.node, ha.priority, ha.virtual_router_id, ha.advert_interval) == ("conc-a", 150, 51, 0.1)
    assert ha.preempt_delay is None and ha.password is None and ha.vrrp_version == 3
    assert str(ha.uplink.virtual_address) == "192.0.2.10/24" and str(ha.sites.peer) == "198.51.100.12"
    assert ha.status_port == 9106 and str(ha.metrics_listen) == "127.0.0.1:9107"
    assert parse(lambda d: d.pop("ha")).ha is None  # the section is optional


@pytest.mark.parametrize(
    ("mutate", "key", "expected"),
    [
        (lambda d: d["ha"].pop("node"), "ha.node", "a name of 1-64"),
        (lambda d: d["ha"].update(priority=255), "ha.priority", "an integer from 1 to 254"),
        (lambda d: d["ha"].update(priority=True), "ha.priority", "an integer from 1 to 254"),
        (lambda d: d["ha"].pop("virtual_router_id"), "ha.virtual_router_id", "an integer from 1 to 255"),
        (lambda d: d["ha"].update(advert_interval=0.005), "ha.advert_interval", "from 0.01 to 40"),
        (lambda d: d["ha"].update(advert_interval=0.123), "ha.advert_interval", "in steps of 0.01"),
        (lambda d: d["ha"].update(preempt="always"), "ha.preempt", "never, or the seconds"),
        (lambda d: d["ha"].update(preempt=2000), "ha.preempt", "never, or the seconds"),
        (lambda d: d["ha"].update(colour="red"), "ha.colour", "a key allowed in ha"),
        (lambda d: d["ha"].pop("uplink"), "ha.uplink", "a mapping with keys interface"),
        (
            lambda d: d["ha"]["uplink"].update(interface="a-very-long-interface"),
            "ha.uplink.interface",
            "an interface name",
        ),
        (
            lambda d: d["ha"]["uplink"].update(virtual_address="192.0.2.10"),
            "ha.uplink.virtual_address",
            "with its prefix",
        ),
        (
            lambda d: d["ha"]["sites"].update(virtual_address="239.1.1.1/24"),
            "ha.sites.virtual_address",
            "a unicast IPv4 address",
        ),
        (lambda d: d["ha"]["sites"].update(peer="198.51.100.10"), "ha.sites.peer", "not the virtual one"),
        (lambda d: d["ha"]["sites"].update(peer="203.0.113.5"), "ha.sites.peer", "an address in 198.51.100.0/24"),
        (lambda d: d["ha"]["sites"].update(interface="bmi0"), "ha.sites.interface", "VRRP must run on two paths"),
        (
            lambda d: d["ha"].update(authentication={"password": "secret"}),
            "ha.authentication",
            "VRRPv3, RFC 5798, has no authentication",
        ),
        (
            lambda d: d["ha"].update(advert_interval=1, authentication={"password": "far too long"}),
            "ha.authentication.password",
            "1 to 8 printable",
        ),
        (lambda d: d["ha"].update(status_port=0), "ha.status_port", "an integer from 1 to 65535"),
        (lambda d: d["ha"].update(metrics_listen="localhost:9107"), "ha.metrics_listen", "an IP address and port"),
        (lambda d: d["ha"].update(keepalived={"pid_file": "run/k.pid"}), "ha.keepalived.pid_file", "an absolute path"),
        # The relay must listen on the address that moves: elsewhere a backup could too.
        (lambda d: d["uplink"].update(listen="0.0.0.0:2404"), "uplink.listen", "the host 192.0.2.10"),
        # The service address counts only when there is a network: section that owns it.
        (lambda d: d["uplink"].update(listen="10.0.0.1:2404"), "uplink.listen", "the host 192.0.2.10"),
        (
            lambda d: _two_paths(d) or d["network"].update(service_address="10.0.0.9"),
            "uplink.listen",
            "or 10.0.0.9 (network.service_address)",
        ),
        (lambda d: d["ha"]["uplink"].update(also={"interface": "bmi1"}), "ha.uplink.also", "a list of"),
        (
            lambda d: d["ha"]["uplink"].update(also=[{"interface": "bmi1"}]),
            "ha.uplink.also[0].virtual_address",
            "with its prefix",
        ),
        (
            lambda d: d["ha"]["uplink"].update(
                also=[{"interface": "bmi1", "virtual_address": "192.0.3.10/24", "x": 0}]
            ),
            "ha.uplink.also[0].x",
            "a key allowed in ha.uplink.also[0]",
        ),
        (
            lambda d: d["ha"]["uplink"].update(also=[{"interface": "b" * 16, "virtual_address": "192.0.3.10/24"}]),
            "ha.uplink.also[0].interface",
            "an interface name",
        ),
        (
            lambda d: d["ha"]["uplink"].update(also=[{"interface": "bmi1", "virtual_address": "198.51.100.10/24"}]),
            "ha.sites.virtual_address",
            "an address not given twice",
        ),
        (
            lambda d: d["ha"]["uplink"].update(also=[{"interface": "bmi1", "virtual_address": "192.0.2.10/24"}]),
            "ha.uplink.also[0].virtual_address",
            "an address not given twice",
        ),
    ],
)
def test_errors_name_the_key(mutate: Callable[[dict[str, Any]], None], key: str, expected: str) -> None:
    err = error(mutate)
    assert err.file == FILE and err.key == key
    assert expected in err.expected, err.expected


def test_password_is_never_echoed() -> None:
    err = error(lambda d: d["ha"].update(advert_interval=1, authentication={"password": "far too long"}))
    assert "far too long" not in str(err)


def test_vrrp2_with_whole_seconds_and_a_password() -> None:
    ha = parse(lambda d: d["ha"].update(advert_interval=1, authentication={"password": "s3cret"}, preempt=30)).ha
    assert ha is not None and ha.vrrp_version == 2 and ha.password == "s3cret" and ha.preempt_delay == 30
    text = render(ha)
    assert "vrrp_version 2" in text and "auth_pass s3cret" in text and "preempt_delay 30" in text
    assert "nopreempt" not in text


def test_render_two_unicast_instances_in_one_sync_group() -> None:
    ha = parse().ha
    assert ha is not None
    text = render(ha)
    assert "vrrp_version 3" in text and text.count("advert_int 0.1") == 2
    assert text.count("state BACKUP") == 2 and text.count("nopreempt") == 2
    assert "unicast_peer {\n        192.0.2.12\n    }" in text
    assert "unicast_peer {\n        198.51.100.12\n    }" in text
    assert "192.0.2.10/24 dev bmi0" in text and "198.51.100.10/24 dev lan0" in text
    group = text[text.index("vrrp_sync_group") : text.index("vrrp_instance")]
    assert "concentrator_uplink" in group and "concentrator_sites" in group and "concentrator_fence" in group
    assert f'vrrp_notify_fifo "{ha.keepalived.notify_fifo}"' in text


def test_two_uplink_paths_one_instance_holds_both_addresses() -> None:
    config = parse(_two_paths)
    ha = config.ha
    assert ha is not None and config.network is not None
    assert config.uplink.listen.host == "10.0.0.1"
    assert [(v.interface, str(v.address)) for v in ha.uplink.addresses] == [
        ("bmi0", "192.0.2.10/24"),
        ("bmi1", "192.0.3.10/24"),
    ]
    assert ha.sites.also == ()
    text = render(ha)
    uplink = text[text.index("vrrp_instance concentrator_uplink") : text.index("vrrp_instance concentrator_sites")]
    # One instance, both addresses: they move together, each on its own interface.
    assert "virtual_ipaddress {\n        192.0.2.10/24 dev bmi0\n        192.0.3.10/24 dev bmi1\n    }" in uplink
    assert "interface bmi0" in uplink and text.count("vrrp_instance") == 2
    assert "192.0.3.10" not in text[text.index("vrrp_instance concentrator_sites") :]


def test_example_file_is_valid_and_keepalived_accepts_what_we_generate(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    assert config.ha is not None
    keepalived = shutil.which("keepalived")
    if keepalived is None:
        if os.environ.get("CI") == "true":
            pytest.fail("needs keepalived: apt-get install keepalived")
        pytest.skip("needs keepalived: apt-get install keepalived")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(render(config.ha))
    # `-t` checks the configuration and exits; the interfaces do not exist here, which it
    # reports as a warning and exit code 5 (KEEPALIVED_EXIT_CONFIG_TEST), anything else
    # it finds wrong too: so compare the complaints, not the code.
    done = subprocess.run([keepalived, "-t", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "doesn't exist" not in line and "Non-existent interface" not in line
    ]
    assert complaints == [], complaints
    broken = tmp_path / "broken.conf"
    broken.write_text(render(config.ha).replace("advert_int", "advert_intervals"))
    done = subprocess.run([keepalived, "-t", "-f", str(broken)], capture_output=True, text=True, timeout=30)
    assert any("advert_intervals" in line for line in (done.stdout + done.stderr).splitlines())
