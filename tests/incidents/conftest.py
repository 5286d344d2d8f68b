"""Shared helpers of the incident register's tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from concentrator.incidents.config import IncidentsConfig, parse_incidents


@dataclass(frozen=True)
class FakeSite:
    name: str
    interruptibility: str = "instantaneous"


SITES = (FakeSite("north"), FakeSite("south", "emergency"))


def incidents_config(tmp: str = "/tmp/unused", **overrides: Any) -> IncidentsConfig:
    section: dict[str, Any] = {"database": f"{tmp}/incidents.sqlite", "spool": f"{tmp}/spool", **overrides}
    return parse_incidents(section, "<test>", SITES)


def end_of_init(ca: int = 101) -> bytes:
    """M_EI_NA_1, cause 4 (initialised), COI 0 (power on)."""
    return bytes((70, 1, 4, 0)) + ca.to_bytes(2, "little") + bytes(3) + b"\x00"
