"""The `shedding:` section: which points of each site the compliance monitor reads.

    shedding:
      database: /var/lib/concentrator/shedding.sqlite   # the local record (SQLite, WAL)
      retention_days: 60              # annex A40 5.6: at least 60 days
      metrics_listen: "127.0.0.1:9106"
      sample_period: 4.0              # annex A40 5.2: Pi every 4 s
      queue_limit: 20000              # ASDUs waiting for the monitor at most
      points:                         # defaults for every site listed below
        total_power: 1001             # IOA of the site's total power (5.1.2), kW
        loads: [1002, 1003]           # IOAs of the interruptible load measures, kW
        breakers: [2001]              # breaker positions, double point (5.4: time-tagged)
        breaker_command: 3001         # C_DC/C_SC command that opens the breaker(s)
        lock: 2002                    # reclosing lock (5.1.4), single point; optional
        release_command: 3002         # the release ("sblocco") command; ON = release
        grid_connection: 2003         # 5.6 connection-to-grid state; optional
      sites:
        site-01: {contractual_kw: 5000, interruptible_kw: 2300}
        site-02: {contractual_kw: 5000, interruptible_kw: 2300, generation: true,
                  trip_group: "239.192.0.1", points: {loads: [1002]}}

Only sites listed under `sites` are monitored; each needs its contractual and
interruptible power (5.2's 5 % tolerance is of the contractual power). `trip_group`
names the multicast group whose forwarded-packet counter (kernel) starts a shedding of
that site. Assembled into the whole file's Config by concentrator/config.py; errors name
the file and the key.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from concentrator.configbase import MISSING, Endpoint, Invalid, endpoint, in_file, integer, items, mapping

_KEYS = ("database", "retention_days", "metrics_listen", "sample_period", "queue_limit", "points", "sites")
_POINT_KEYS = ("total_power", "loads", "breakers", "breaker_command", "lock", "release_command", "grid_connection")
_REQUIRED_POINTS = ("total_power", "loads", "breakers", "breaker_command", "release_command")
_SITE_KEYS = ("contractual_kw", "interruptible_kw", "generation", "trip_group", "points")
MAX_IOA = 0xFFFFFF
DEFAULT_METRICS_LISTEN = "127.0.0.1:9106"


@dataclass(frozen=True)
class SitePoints:
    total_power: int
    loads: tuple[int, ...]
    breakers: tuple[int, ...]
    breaker_command: int
    release_command: int
    lock: int | None = None
    grid_connection: int | None = None


@dataclass(frozen=True)
class ShedSite:
    """One monitored site: its points, its powers and what the relay config says of it."""

    name: str
    common_addresses: tuple[int, ...]
    instantaneous: bool  # 5.1.1: opening within 200 ms (else emergency: 5 s); 5 ms time error
    points: SitePoints
    contractual_kw: float
    interruptible_kw: float
    generation: bool = False  # 5.6: total power may be negative; connection state matters
    trip_group: str | None = None

    @property
    def tolerance_kw(self) -> float:
        """5.2: the band allowed on the increase of Pi, 5 % of the contractual power."""
        return 0.05 * self.contractual_kw

    @property
    def opening_limit(self) -> float:
        """5.1.1 / 5.2: breaker opening time allowed, seconds."""
        return 0.2 if self.instantaneous else 5.0


@dataclass(frozen=True)
class SheddingConfig:
    database: str
    retention_days: int
    metrics_listen: Endpoint
    sample_period: float
    queue_limit: int
    sites: tuple[ShedSite, ...]

    def site(self, name: str) -> ShedSite | None:
        return next((s for s in self.sites if s.name == name), None)


class _Site(Protocol):
    """What this section needs of a site of `sites:` (concentrator.config.SiteConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def common_addresses(self) -> tuple[int, ...]: ...
    @property
    def interruptibility(self) -> str: ...


def parse_shedding(value: object, file: str, sites: Sequence[_Site]) -> SheddingConfig:
    with in_file(file):
        return _parse(value, sites)


def _number(v: object, key: str, expected: str, low: float, high: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise Invalid(key, expected, v)
    return float(v)


def _ioa(v: object, key: str) -> int:
    return integer(v, key, 1, MAX_IOA, expected=f"an information object address from 1 to {MAX_IOA}")


def _ioas(v: object, key: str) -> tuple[int, ...]:
    listed = items(v, key, "a non-empty list of information object addresses")
    return tuple(_ioa(item, f"{key}[{i}]") for i, item in enumerate(listed))


def _parse(value: object, sites: Sequence[_Site]) -> SheddingConfig:
    top = mapping(value, "shedding", _KEYS)
    database = top.get("database", MISSING)
    if not isinstance(database, str) or not database:
        raise Invalid("shedding.database", "the path of the SQLite record (its directory must be writable)", database)
    retention = integer(top.get("retention_days", 60), "shedding.retention_days", 60, 3650,
                        expected="a whole number of days from 60 (annex A40 5.6) to 3650")  # fmt: skip
    listen = endpoint(top.get("metrics_listen", DEFAULT_METRICS_LISTEN), "shedding.metrics_listen", ip_only=True)
    period = _number(top.get("sample_period", 4.0), "shedding.sample_period",
                     "seconds between samples, from 0.05 to 60 (annex A40: 4)", 0.05, 60)  # fmt: skip
    limit = integer(top.get("queue_limit", 20_000), "shedding.queue_limit", 100, 10_000_000)

    defaults = mapping(top.get("points", {}), "shedding.points", _POINT_KEYS)
    by_name = {site.name: site for site in sites}
    listed = top.get("sites", MISSING)
    if not isinstance(listed, dict) or not listed:
        raise Invalid("shedding.sites", "a mapping of site names (from sites:) to their powers", listed)
    result: list[ShedSite] = []
    for name, entry in listed.items():
        key = f"shedding.sites.{name}"
        site = by_name.get(name) if isinstance(name, str) else None
        if site is None:
            raise Invalid(key, f"the name of a site in sites: ({', '.join(by_name)})", name)
        m = mapping(entry, key, _SITE_KEYS)
        own = mapping(m.get("points", {}), f"{key}.points", _POINT_KEYS)
        merged = {**defaults, **own}
        for point in _REQUIRED_POINTS:
            if point not in merged:
                raise Invalid(f"{key}.points.{point}", f"{point} here or in shedding.points")

        def where(point: str, own: dict[str, object] = own, key: str = key) -> str:
            return f"{key}.points.{point}" if point in own else f"shedding.points.{point}"

        def optional(point: str, merged: dict[str, object] = merged) -> int | None:
            return None if merged.get(point) is None else _ioa(merged[point], where(point))

        points = SitePoints(
            total_power=_ioa(merged["total_power"], where("total_power")),
            loads=_ioas(merged["loads"], where("loads")),
            breakers=_ioas(merged["breakers"], where("breakers")),
            breaker_command=_ioa(merged["breaker_command"], where("breaker_command")),
            release_command=_ioa(merged["release_command"], where("release_command")),
            lock=optional("lock"),
            grid_connection=optional("grid_connection"),
        )
        monitored = [points.total_power, *points.loads, *points.breakers]
        monitored += [p for p in (points.lock, points.grid_connection) if p is not None]
        if len(set(monitored)) != len(monitored):
            raise Invalid(f"{key}.points", "a different information object address for each monitored point",
                       monitored)  # fmt: skip
        contractual = _number(m.get("contractual_kw", MISSING), f"{key}.contractual_kw",
                             "the site's contractual power in kW, above 0", 1e-9)  # fmt: skip
        interruptible = _number(m.get("interruptible_kw", MISSING), f"{key}.interruptible_kw",
                               "the site's assigned interruptible power in kW, 0 or more", 0)  # fmt: skip
        generation = m.get("generation", False)
        if not isinstance(generation, bool):
            raise Invalid(f"{key}.generation", "true or false (annex A40 5.6: production units on site)", generation)
        group = m.get("trip_group")
        if group is not None:
            try:
                ok = isinstance(group, str) and ipaddress.IPv4Address(group).is_multicast
            except ValueError:
                ok = False
            if not ok or not isinstance(group, str):
                raise Invalid(f"{key}.trip_group", 'an IPv4 multicast group, as "239.192.0.1"', group)
        result.append(ShedSite(
            name=name,
            common_addresses=site.common_addresses,
            instantaneous=site.interruptibility == "instantaneous",
            points=points,
            contractual_kw=contractual,
            interruptible_kw=interruptible,
            generation=generation,
            trip_group=group,
        ))  # fmt: skip
    return SheddingConfig(database, retention, listen, period, limit, tuple(result))
