"""The `shedding:` section: parsed into the point map, refused with file, key and expectation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from concentrator.config import ConfigError, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "concentrator.yaml"
BASE: dict[str, Any] = {
    "uplink": {"listen": "0.0.0.0:2404", "allowed_peers": ["10.1.0.10"]},
    "sites": [
        {"name": "a", "common_addresses": [101], "endpoints": ["192.0.2.1:2404"], "interruptibility": "instantaneous"},
        {"name": "b", "common_addresses": [102], "endpoints": ["192.0.2.2:2404"], "interruptibility": "emergency"},
    ],
    "shedding": {
        "database": "/tmp/x.sqlite",
        "points": {
            "total_power": 1001,
            "loads": [1002],
            "breakers": [2001],
            "breaker_command": 3001,
            "release_command": 3002,
            "lock": 2002,
        },
        "sites": {
            "a": {"contractual_kw": 1000, "interruptible_kw": 400},
            "b": {
                "contractual_kw": 2000,
                "interruptible_kw": 900,
                "points": {"loads": [1002, 1003]},
                "trip_group": "239.1.2.3",
                "generation": True,
            },
        },
    },
}


def test_example_configuration_has_a_point_map_for_the_simulators() -> None:
    config = parse_config(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))
    assert config.shedding is not None
    site = config.shedding.site("site-01")
    assert site is not None and site.points.total_power == 1001 and site.points.breakers == (2001,)
    assert site.tolerance_kw == 250.0 and site.opening_limit == 0.2
    assert config.shedding.site("site-03").opening_limit == 5.0  # emergency


def test_defaults_merge_with_each_site_points() -> None:
    shedding = parse_config(copy.deepcopy(BASE), "f.yaml").shedding
    assert shedding is not None and shedding.retention_days == 60 and shedding.sample_period == 4.0
    a, b = shedding.sites
    assert a.points.loads == (1002,) and b.points.loads == (1002, 1003)
    assert a.instantaneous and not b.instantaneous and b.generation and b.trip_group == "239.1.2.3"
    assert b.common_addresses == (102,) and b.points.lock == 2002


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (
            lambda s: s["sites"].update(c={"contractual_kw": 1, "interruptible_kw": 1}),
            "shedding.sites.c",
            "the name of a site in sites:",
        ),
        (lambda s: s["sites"]["a"].pop("contractual_kw"), "shedding.sites.a.contractual_kw", "contractual power"),
        (lambda s: s["sites"]["a"].update(contractual_kw=0), "shedding.sites.a.contractual_kw", "above 0"),
        (lambda s: s["points"].pop("total_power"), "shedding.sites.a.points.total_power", "shedding.points"),
        (lambda s: s["points"].update(loads=[]), "shedding.points.loads", "non-empty list"),
        (
            lambda s: s["sites"]["b"]["points"].update(loads=[2**24]),
            "shedding.sites.b.points.loads[0]",
            "information object address",
        ),
        (lambda s: s["points"].update(lock=1001), "shedding.sites.a.points", "a different information object"),
        (lambda s: s["sites"]["b"].update(trip_group="10.0.0.1"), "shedding.sites.b.trip_group", "multicast"),
        (lambda s: s.update(retention_days=30), "shedding.retention_days", "from 60"),
        (lambda s: s.update(sample_period="4s"), "shedding.sample_period", "seconds"),
        (lambda s: s.update(colour="red"), "shedding.colour", "a key allowed in shedding"),
        (lambda s: s.update(metrics_listen="localhost:1"), "shedding.metrics_listen", "IP address"),
        (lambda s: s.pop("database"), "shedding.database", "SQLite"),
    ],
)
def test_bad_shedding_section_is_refused_with_key_and_expectation(change: Any, key: str, expected: str) -> None:
    data = copy.deepcopy(BASE)
    change(data["shedding"])
    with pytest.raises(ConfigError) as info:
        parse_config(data, "f.yaml")
    assert info.value.file == "f.yaml" and info.value.key == key, str(info.value)
    assert expected in info.value.expected


def test_check_config_refuses_a_bad_point_map(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["shedding"]["points"]["breakers"] = "2001"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "concentrator", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert f"{path}: shedding.points.breakers: expected a non-empty list" in run.stderr
