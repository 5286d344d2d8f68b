"""Validation of the `network:` section."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from concentrator.config import MISSING, ConfigError
from netconfig.config import parse_network
from netconfig.failover import FailbackMode

GOOD: dict[str, Any] = {
    "service_address": "10.0.0.1",
    "probe": {"interval": 0.05, "misses": 4},
    "hold_time": 3,
    "failback": "manual",
    "rto_min": 0.15,
    "uplink": {
        "destinations": ["10.0.1.0/24"],
        "primary": {"interface": "up0", "gateway": "172.16.0.2", "probe_target": "172.16.0.2"},
        "backup": {"interface": "up1", "gateway": "172.16.1.2"},
    },
    "sites": [
        {
            "name": "site01",
            "destinations": ["10.1.1.1/32"],
            "primary": {"interface": "s1a", "gateway": "172.20.1.2"},
            "backup": {"interface": "s1b", "gateway": "172.21.1.2", "probe_target": "10.9.9.9"},
        }
    ],
}


def test_good_section_parses() -> None:
    cfg = parse_network(copy.deepcopy(GOOD), "a.yaml")
    assert cfg.service_address == IPv4Address("10.0.0.1")
    assert (cfg.probe_interval, cfg.probe_misses, cfg.hold_time) == (0.05, 4, 3.0)
    assert cfg.failback is FailbackMode.MANUAL
    assert cfg.uplink is not None
    assert cfg.uplink.name == "uplink"
    assert cfg.uplink.destinations == (IPv4Network("10.0.1.0/24"),)
    assert cfg.uplink.backup.probe_target == IPv4Address("172.16.1.2")  # defaults to gateway
    assert [link.name for link in cfg.links] == ["uplink", "site01"]
    assert cfg.sites[0].backup.probe_target == IPv4Address("10.9.9.9")
    assert cfg.failover_params.misses == 4
    assert cfg.rto_min == 0.15


def test_defaults() -> None:
    raw = {"service_address": "10.0.0.1", "uplink": copy.deepcopy(GOOD["uplink"])}
    cfg = parse_network(raw, "a.yaml")
    assert (cfg.probe_interval, cfg.probe_misses, cfg.hold_time) == (0.1, 3, 10.0)
    assert cfg.failback is FailbackMode.AUTO
    assert cfg.sites == ()
    assert cfg.rto_min is None


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "key", "got"),
    [
        (["service_address"], "10.0.0", "network.service_address", "10.0.0"),
        (["service_address"], _DELETE, "network.service_address", MISSING),
        (["probe", "interval"], 0, "network.probe.interval", 0),
        (["probe", "interval"], "fast", "network.probe.interval", "fast"),
        (["probe", "misses"], 0, "network.probe.misses", 0),
        (["probe", "misses"], True, "network.probe.misses", True),
        (["hold_time"], -1, "network.hold_time", -1),
        (["failback"], "sometimes", "network.failback", "sometimes"),
        (["rto_min"], 0.001, "network.rto_min", 0.001),
        (["rto_min"], 5, "network.rto_min", 5),
        (["uplink", "primary", "interface"], "a/b", "network.uplink.primary.interface", "a/b"),
        (["uplink", "primary", "interface"], "x" * 16, "network.uplink.primary.interface", "x" * 16),
        (["uplink", "primary", "gateway"], 5, "network.uplink.primary.gateway", 5),
        (["uplink", "backup", "probe_target"], "nope", "network.uplink.backup.probe_target", "nope"),
        (["uplink", "backup", "interface"], "up0", "network.uplink.backup.interface", "up0"),
        (["uplink", "destinations"], [], "network.uplink.destinations", []),
        (["uplink", "destinations", 0], "10.0.1.1/24", "network.uplink.destinations[0]", "10.0.1.1/24"),
        (["uplink", "primary", "mtu"], 1500, "network.uplink.primary.mtu", "mtu"),
        (["uplink", "backup"], _DELETE, "network.uplink.backup", MISSING),
        (["sites", 0, "name"], "", "network.sites[0].name", ""),
        (["sites", 0, "name"], "uplink", "network.sites[0].name", "uplink"),
        (["sites", 0, "primary", "interface"], "up1", "network.sites[0].primary.interface", "up1"),
        (["sites", 0, "destinations", 0], "10.0.1.7/32", "network.sites[0].destinations[0]", "10.0.1.7/32"),
        (["sites"], {"name": "x"}, "network.sites", {"name": "x"}),
        (["extra"], 1, "network.extra", "extra"),
    ],
)
def test_each_bad_value_is_named(path: list[Any], value: Any, key: str, got: Any) -> None:
    raw = _set(copy.deepcopy(GOOD), path, value)
    with pytest.raises(ConfigError) as info:
        parse_network(raw, "conf/x.yaml")
    message = str(info.value)
    assert message.startswith(f"conf/x.yaml: {key}: expected ")
    assert message.endswith("missing" if got is MISSING else f", got {got!r}")


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        parse_network(None, "f.yaml")
    assert str(info.value) == "f.yaml: network: expected a mapping, got None"


def test_absent_section_is_reported_missing() -> None:
    with pytest.raises(ConfigError) as info:
        parse_network(MISSING, "f.yaml")
    assert str(info.value) == "f.yaml: network: expected a mapping, missing"


def test_nothing_to_protect_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_network({"service_address": "10.0.0.1"}, "f.yaml")
    assert "network.uplink" in str(info.value)
