"""The `incidents:` section: defaults, and a bad value refused with the file, the key
and what was expected."""

from __future__ import annotations

from typing import Any

import pytest

from concentrator.configbase import ConfigError

from .conftest import incidents_config


def test_defaults_follow_the_annex() -> None:
    config = incidents_config()
    assert (config.unreachable_grace, config.measure_grace, config.bmi_grace) == (20.0, 20.0, 20.0)
    north, south = config.sites
    assert north.skew_limit == 0.005 and south.skew_limit is None  # 5.4: instantaneous only
    assert north.updc == "north" and north.measures == frozenset()
    assert config.smtp is None and not config.automatic_closing


@pytest.mark.parametrize(("overrides", "key", "expected"), [
    ({"unreachable_grace": -1}, "incidents.unreachable_grace", "a number of seconds at least 0"),
    ({"closing": "sometimes"}, "incidents.closing", "confirm"),
    ({"sites": {"west": {}}}, "incidents.sites.west", "a key allowed in incidents.sites"),
    ({"sites": {"north": {"measures": []}}}, "incidents.sites.north.measures", "a non-empty list of IOAs"),
    ({"sites": {"north": {"skew_limit": "5ms"}}}, "incidents.sites.north.skew_limit", "a number of seconds"),
    ({"smtp": {"host": "relay", "from": "me", "to": ["a@b.c"]}}, "incidents.smtp.from", "an e-mail address"),
    ({"smtp": {"host": "relay", "from": "a@b.c", "to": ["x@y.z"], "ca_file": "/nonexistent"}},
     "incidents.smtp.ca_file", "a readable file of CA certificates"),
    ({"smtp": {"host": "relay", "from": "a@b.c", "to": ["x@y.z"], "username": "u"}},
     "incidents.smtp.password_file", "username and password_file together"),
    ({"spool": ""}, "incidents.spool", "the directory the notices are written to"),
    ({"typo": 1}, "incidents.typo", "a key allowed in incidents"),
])  # fmt: skip
def test_bad_values_are_refused_with_the_key(overrides: dict[str, Any], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        incidents_config(**overrides)
    assert caught.value.file == "<test>" and caught.value.key == key
    assert expected in caught.value.expected
