"""The `network:` section of the appliance's YAML file: schema and validation.

    network:
      service_address: 10.0.0.1      # on a dummy/loopback, on neither uplink; used as the
                                     # routes' prefsrc so TCP sessions survive a switch
      probe: {interval: 0.1, misses: 3}   # active probe per path (seconds, count)
      hold_time: 10                  # seconds the primary must be healthy before fail-back
      failback: auto                 # auto | manual
      rto_min: 0.15                  # optional: TCP retransmission floor (seconds) on the
                                     # routes installed; kernel default (0.2 s) if absent
      uplink:
        destinations: [10.0.1.0/24]  # prefixes reached over this link (the BMI networks)
        primary: {interface: up0, gateway: 172.16.0.2, probe_target: 172.16.0.2}
        backup:  {interface: up1, gateway: 172.16.1.2}   # probe_target defaults to gateway
      sites:                         # optional: one entry per site with two paths
        - name: site01
          destinations: [10.1.1.1/32]  # the site's endpoint addresses
          primary: {interface: s1a, gateway: 172.20.1.2}
          backup:  {interface: s1b, gateway: 172.21.1.2}

Errors are `concentrator.configbase.ConfigError(file, key, expected, got)` with dotted key
paths such as `network.uplink.primary.interface` or `network.sites[2].name`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from concentrator.configbase import MISSING, ConfigError, Endpoint, endpoint, in_file, mapping, seconds

from .failover import FailbackMode, FailoverParams


@dataclass(frozen=True, slots=True)
class PathConfig:
    interface: str
    gateway: IPv4Address
    probe_target: IPv4Address


@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str  # "uplink" or the site's name
    destinations: tuple[IPv4Network, ...]
    primary: PathConfig
    backup: PathConfig


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    service_address: IPv4Address
    probe_interval: float = 0.1
    probe_misses: int = 3
    hold_time: float = 10.0
    failback: FailbackMode = FailbackMode.AUTO
    uplink: LinkConfig | None = None
    sites: tuple[LinkConfig, ...] = field(default_factory=tuple)
    rto_min: float | None = None
    metrics_listen: Endpoint | None = None  # where netd serves its Prometheus metrics

    @property
    def links(self) -> tuple[LinkConfig, ...]:
        head = (self.uplink,) if self.uplink is not None else ()
        return head + self.sites

    @property
    def failover_params(self) -> FailoverParams:
        return FailoverParams(misses=self.probe_misses, hold_time=self.hold_time, failback=self.failback)


_TOP_KEYS = {"service_address", "probe", "hold_time", "failback", "rto_min", "metrics_listen", "uplink", "sites"}
_LINK_KEYS = {"destinations", "primary", "backup"}
_SITE_KEYS = _LINK_KEYS | {"name"}
_PATH_KEYS = {"interface", "gateway", "probe_target"}
_PROBE_KEYS = {"interval", "misses"}


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(self.file, key, expected, got)

    def mapping(self, raw: object, key: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        with in_file(self.file):
            return mapping(raw, key, allowed, required=required, expected="a mapping")

    def ipv4(self, raw: object, key: str) -> IPv4Address:
        if not isinstance(raw, str):
            raise self.error(key, "an IPv4 address", raw)
        try:
            return IPv4Address(raw)
        except ValueError:
            raise self.error(key, "an IPv4 address", raw) from None

    def prefix(self, raw: object, key: str) -> IPv4Network:
        if not isinstance(raw, str):
            raise self.error(key, "an IPv4 prefix such as 10.0.1.0/24", raw)
        try:
            return ipaddress.IPv4Network(raw, strict=True)
        except ValueError:
            raise self.error(key, "an IPv4 prefix such as 10.0.1.0/24 (no host bits set)", raw) from None

    def seconds(self, raw: object, key: str, minimum: float, strict: bool) -> float:
        with in_file(self.file):
            value = seconds(raw, key)
        if value < minimum or (strict and value == minimum):
            relation = "greater than" if strict else "at least"
            raise self.error(key, f"a number of seconds {relation} {minimum:g}", raw)
        return value

    def interface(self, raw: object, key: str) -> str:
        # Linux interface names: 1..15 bytes, no '/', no whitespace, not '.' or '..'.
        if (
            not isinstance(raw, str)
            or not 1 <= len(raw.encode()) <= 15
            or "/" in raw
            or any(c.isspace() for c in raw)
            or raw in (".", "..")
        ):
            raise self.error(key, "a Linux interface name (1 to 15 characters, no '/' or spaces)", raw)
        return raw

    def path(self, raw: object, key: str) -> PathConfig:
        m = self.mapping(raw, key, _PATH_KEYS, {"interface", "gateway"})
        gateway = self.ipv4(m["gateway"], f"{key}.gateway")
        target = gateway
        if m.get("probe_target") is not None:
            target = self.ipv4(m["probe_target"], f"{key}.probe_target")
        return PathConfig(self.interface(m["interface"], f"{key}.interface"), gateway, target)

    def link(self, raw: object, key: str, name: str | None) -> LinkConfig:
        if name is None:
            m = self.mapping(raw, key, _LINK_KEYS, _LINK_KEYS)
        else:
            m = self.mapping(raw, key, _SITE_KEYS, _SITE_KEYS)
            name_raw = m["name"]
            if not isinstance(name_raw, str) or not name_raw:
                raise self.error(f"{key}.name", "a non-empty string", name_raw)
            name = name_raw
        dests_raw = m["destinations"]
        if not isinstance(dests_raw, list) or not dests_raw:
            raise self.error(f"{key}.destinations", "a non-empty list of IPv4 prefixes", dests_raw)
        dests = tuple(self.prefix(d, f"{key}.destinations[{i}]") for i, d in enumerate(dests_raw))
        primary = self.path(m["primary"], f"{key}.primary")
        backup = self.path(m["backup"], f"{key}.backup")
        if backup.interface == primary.interface:
            expected = f"an interface other than the primary's ({primary.interface})"
            raise self.error(f"{key}.backup.interface", expected, backup.interface)
        return LinkConfig(name or "uplink", dests, primary, backup)


def _first_overlap(prefixes: list[IPv4Network]) -> tuple[int, int] | None:
    """Indices (earlier, later) of two overlapping prefixes, or None; O(n log n).

    Two prefixes overlap only if one contains the other. In order of first address, a
    prefix overlaps an earlier one exactly when it starts before the furthest end so far,
    and then the prefix reaching that end contains it."""
    order = sorted(range(len(prefixes)), key=lambda i: (prefixes[i].network_address, -prefixes[i].prefixlen, i))
    widest: int | None = None  # the prefix reaching furthest so far
    for i in order:
        if widest is not None and prefixes[i].network_address <= prefixes[widest].broadcast_address:
            return min(i, widest), max(i, widest)
        if widest is None or prefixes[i].broadcast_address > prefixes[widest].broadcast_address:
            widest = i
    return None


def parse_network(raw: object, file: str) -> NetworkConfig:
    """Validate the `network:` section (`raw` is its value, or MISSING) into a NetworkConfig."""
    p = _Parser(file)
    m = p.mapping(raw, "network", _TOP_KEYS, {"service_address"})
    service = p.ipv4(m["service_address"], "network.service_address")

    interval, misses = 0.1, 3
    if m.get("probe") is not None:
        probe = p.mapping(m["probe"], "network.probe", _PROBE_KEYS, set())
        if "interval" in probe:
            interval = p.seconds(probe["interval"], "network.probe.interval", 0.01, strict=False)
        if "misses" in probe:
            raw_misses = probe["misses"]
            if isinstance(raw_misses, bool) or not isinstance(raw_misses, int) or raw_misses < 1:
                raise p.error("network.probe.misses", "an integer of at least 1", raw_misses)
            misses = raw_misses

    hold = 10.0
    if "hold_time" in m:
        hold = p.seconds(m["hold_time"], "network.hold_time", 0.0, strict=False)

    mode = FailbackMode.AUTO
    if "failback" in m:
        try:
            mode = FailbackMode(m["failback"])
        except ValueError:
            raise p.error("network.failback", "auto or manual", m["failback"]) from None

    rto_min = None
    if m.get("rto_min") is not None:
        rto_min = p.seconds(m["rto_min"], "network.rto_min", 0.005, strict=False)
        if rto_min > 2.0:
            raise p.error("network.rto_min", "a number of seconds from 0.005 to 2", m["rto_min"])

    uplink = p.link(m["uplink"], "network.uplink", None) if m.get("uplink") is not None else None

    sites_raw = m.get("sites") or []
    if not isinstance(sites_raw, list):
        raise p.error("network.sites", "a list of sites", sites_raw)
    sites = tuple(p.link(s, f"network.sites[{i}]", "") for i, s in enumerate(sites_raw))
    if uplink is None and not sites:
        raise p.error("network.uplink", "an uplink or at least one site to protect", MISSING)

    # One owner per interface, destination and name: two links fighting over the
    # same route would undo each other's switches.
    seen_if: dict[str, str] = {}
    dests: list[tuple[IPv4Network, str, str]] = []  # (prefix, owner, key), in the file's order
    seen_name: set[str] = set()
    for i, link in enumerate((uplink,) + sites if uplink else sites):
        key = "network.uplink" if link is uplink else f"network.sites[{i - (1 if uplink else 0)}]"
        if link.name in seen_name:
            raise p.error(f"{key}.name", "a name used by no other site", link.name)
        seen_name.add(link.name)
        for role, path in (("primary", link.primary), ("backup", link.backup)):
            if path.interface in seen_if:
                expected = f"an interface not already used by {seen_if[path.interface]}"
                raise p.error(f"{key}.{role}.interface", expected, path.interface)
            seen_if[path.interface] = link.name
        dests += ((dest, link.name, f"{key}.destinations[{j}]") for j, dest in enumerate(link.destinations))
    overlap = _first_overlap([dest for dest, _, _ in dests])
    if overlap is not None:
        (other, owner, _), (dest, _, key) = dests[overlap[0]], dests[overlap[1]]
        raise p.error(key, f"a prefix not overlapping {other} of {owner}", str(dest))
    metrics = None
    if m.get("metrics_listen") is not None:
        with in_file(file):
            metrics = endpoint(m["metrics_listen"], "network.metrics_listen", ip_only=True)
    return NetworkConfig(service, interval, misses, hold, mode, uplink, sites, rto_min, metrics)
