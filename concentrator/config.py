"""Configuration: load and validate the concentrator's local YAML file.

The file is the only way to configure the appliance (no network interface changes it).
Every problem is reported as a `ConfigError` naming the file, the key path
(`uplink.listen`, `sites[3].endpoints[1]`) and what was expected there. Unknown keys
are errors, so that a typo cannot pass silently, and so are keys given twice.

Layers (README, Architecture): the primitives (errors, the bounded YAML loader, value
checks) are in concentrator/configbase.py; each section has one parser, written by its
owner: the relay's `uplink:`, `sites:` and `metrics:` here, `network:` and `multicast:`
in netconfig/ (the link manager reads them alone, without the relay), `mqtt:` in
concentrator/mirror/config.py. This module assembles the whole file's `Config` from them.

The relay's sections have one parser each in `_SECTIONS`; adding one means writing its
parser, adding it there and adding the matching field to `Config`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from concentrator.configbase import (
    MISSING,
    ConfigError,
    Endpoint,
    Invalid,
    IPNetwork,
    endpoint,
    in_file,
    integer,
    items,
    join,
    mapping,
    network,
    read_yaml,
    seconds,
)
from concentrator.ha.config import HaConfig, check_against_relay, parse_ha
from concentrator.iec104.asdu import BROADCAST_CA
from concentrator.iec104.link import LinkParams
from concentrator.incidents.config import IncidentsConfig, parse_incidents
from concentrator.mirror.config import MqttConfig, parse_mqtt
from concentrator.shedding.config import SheddingConfig, parse_shedding
from concentrator.windows import window_problems
from netconfig.config import NetworkConfig, parse_network
from netconfig.trip.config import MulticastConfig, parse_multicast

__all__ = [
    "ConfigError",
    "Endpoint",
    "UplinkConfig",
    "SiteConfig",
    "MetricsConfig",
    "Config",
    "load_config",
    "parse_config",
    "INTERRUPTIBILITY",
]

INTERRUPTIBILITY = ("instantaneous", "emergency")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9104"


@dataclass(frozen=True)
class UplinkConfig:
    """The listening side toward the BMI (the concentrator is the controlled station)."""

    listen: Endpoint
    allowed_peers: tuple[IPNetwork, ...]
    params: LinkParams
    max_connections: int = 4  # the BMI's redundancy group is 2-4 connections; more are refused at accept
    close_on_foreign_ca: bool = False  # `foreign_ca: close`: a site sending another CA is disconnected

    def allows(self, address: str) -> bool:
        """Whether a peer at `address` may connect (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed_peers)


@dataclass(frozen=True)
class SiteConfig:
    """One site's UPDC; the concentrator is its controlling station.

    `endpoints` is primary first, then the optional backup. `params` are the IEC
    defaults with this site's overrides applied (not the uplink's values).
    """

    name: str
    common_addresses: tuple[int, ...]
    endpoints: tuple[Endpoint, ...]
    interruptibility: str
    params: LinkParams


@dataclass(frozen=True)
class MetricsConfig:
    listen: Endpoint


@dataclass(frozen=True)
class Config:
    file: str
    sha256: str
    mtime: float
    uplink: UplinkConfig
    sites: tuple[SiteConfig, ...]
    metrics: MetricsConfig
    network: NetworkConfig | None = None  # the link manager's section, if present
    multicast: MulticastConfig | None = None  # the trip path (also the link manager's), if present
    mqtt: MqttConfig | None = None  # the telemetry mirror (concentrator/mirror), if present
    shedding: SheddingConfig | None = None  # the shedding compliance monitor (concentrator/shedding), if present
    ha: HaConfig | None = None  # a redundant pair under keepalived (concentrator/ha/config.py), if present
    incidents: IncidentsConfig | None = None  # the incident register (concentrator/incidents), if present
    _by_ca: dict[int, SiteConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_ca = {ca: site for site in self.sites for ca in site.common_addresses}
        object.__setattr__(self, "_by_ca", by_ca)

    def site_for(self, common_address: int) -> SiteConfig | None:
        """The site owning `common_address`; None if unknown (and for broadcast)."""
        return self._by_ca.get(common_address)

    def listeners(self) -> list[tuple[str, Endpoint]]:
        """Every address the appliance's processes listen on, with its key: the relay's
        uplink and metrics, the link manager's, the shedding monitor's and the HA supervisor's."""
        found = [("uplink.listen", self.uplink.listen), ("metrics.listen", self.metrics.listen)]
        if self.network is not None and self.network.metrics_listen is not None:
            found.append(("network.metrics_listen", self.network.metrics_listen))
        if self.shedding is not None:
            found.append(("shedding.metrics_listen", self.shedding.metrics_listen))
        if self.ha is not None:
            found.append(("ha.metrics_listen", self.ha.metrics_listen))
        if self.incidents is not None:
            found.append(("incidents.metrics_listen", self.incidents.metrics_listen))
        return found


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML file at `path`."""
    file = os.fspath(path)
    data, raw, mtime = read_yaml(file)
    return parse_config(data, file, sha256=hashlib.sha256(raw).hexdigest(), mtime=mtime)


def parse_config(data: object, file: str, *, sha256: str = "", mtime: float = 0.0) -> Config:
    """Validate an already-loaded document (a mapping) and build the `Config`."""
    with in_file(file):
        top = mapping(data, "", [*_SECTIONS, *_OWN_SECTIONS])
        sections = {name: parse(top.get(name, MISSING), name) for name, parse in _SECTIONS.items()}
        _check_listeners(sections["uplink"], sections["metrics"])
        for problem in window_problems(sections["uplink"].params, [site.params for site in sections["sites"]]):
            raise Invalid(*problem)
    net = None if top.get("network", MISSING) is MISSING else parse_network(top["network"], file)
    multicast = None
    if top.get("multicast", MISSING) is not MISSING:
        multicast = parse_multicast(top["multicast"], file, net)
    mqtt = None
    if top.get("mqtt", MISSING) is not MISSING:
        mqtt = parse_mqtt(top["mqtt"], file, {site.name for site in sections["sites"]})
    shedding = None
    if top.get("shedding", MISSING) is not MISSING:
        shedding = parse_shedding(top["shedding"], file, sections["sites"])
    ha = None
    if top.get("ha", MISSING) is not MISSING:
        ha = parse_ha(top["ha"], file)
        check_against_relay(ha, sections["uplink"].listen.host, file, None if net is None else net.service_address)
    incidents = None
    if top.get("incidents", MISSING) is not MISSING:
        incidents = parse_incidents(top["incidents"], file, sections["sites"])
    return Config(
        file=file,
        sha256=sha256,
        mtime=mtime,
        network=net,
        multicast=multicast,
        mqtt=mqtt,
        shedding=shedding,
        ha=ha,
        incidents=incidents,
        **sections,
    )


# --------------------------------------------------------------------------- sections


_LINK_KEYS = ("k", "w", "t0", "t1", "t2", "t3")
_UPLINK_KEYS = ("listen", "allowed_peers", "max_connections", "foreign_ca", *_LINK_KEYS)
_SITE_KEYS = ("name", "common_addresses", "endpoints", "interruptibility", *_LINK_KEYS)
_METRICS_KEYS = ("listen",)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_uplink(value: object, path: str) -> UplinkConfig:
    m = mapping(value, path, _UPLINK_KEYS)
    listen = endpoint(m.get("listen", MISSING), join(path, "listen"), ip_only=True)
    peers_path = join(path, "allowed_peers")
    peers = items(m.get("allowed_peers", MISSING), peers_path, "a non-empty list of IP addresses or networks")
    allowed = tuple(network(peer, f"{peers_path}[{i}]") for i, peer in enumerate(peers))
    ceiling = integer(m.get("max_connections", 4), join(path, "max_connections"), 1, 64)
    foreign_ca = m.get("foreign_ca", "drop")
    if foreign_ca not in ("drop", "close"):
        raise Invalid(join(path, "foreign_ca"), "drop or close (for a site's ASDU with another CA)", foreign_ca)
    return UplinkConfig(listen, allowed, _link_params(m, path), ceiling, foreign_ca == "close")


def _parse_sites(value: object, path: str) -> tuple[SiteConfig, ...]:
    entries = items(value, path, "a non-empty list of sites")
    sites: list[SiteConfig] = []
    names: dict[str, int] = {}
    owners: dict[int, int] = {}
    for i, item in enumerate(entries):
        site_path = f"{path}[{i}]"
        site = _parse_site(item, site_path)
        if site.name in names:
            expected = f"a name no other site has ({path}[{names[site.name]}] has it)"
            raise Invalid(f"{site_path}.name", expected, site.name)
        names[site.name] = i
        for j, ca in enumerate(site.common_addresses):
            if ca in owners:
                other = sites[owners[ca]]
                expected = (
                    f"common addresses unique across all sites "
                    f"({site.name} and {other.name} at {path}[{owners[ca]}] both have it)"
                )
                raise Invalid(f"{site_path}.common_addresses[{j}]", expected, ca)
            owners[ca] = i
        sites.append(site)
    return tuple(sites)


def _parse_site(value: object, path: str) -> SiteConfig:
    m = mapping(value, path, _SITE_KEYS)
    name = m.get("name", MISSING)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Invalid(join(path, "name"), "a non-empty name of letters, digits, '_', '.', '-'", name)

    cas_path = join(path, "common_addresses")
    cas = items(m.get("common_addresses", MISSING), cas_path, "a non-empty list of common addresses")
    common_addresses: dict[int, None] = {}  # in the file's order; a dict for linear duplicate checks
    for j, item in enumerate(cas):
        expected = f"a common address from 1 to {BROADCAST_CA - 1} ({BROADCAST_CA} is broadcast)"
        ca = integer(item, f"{cas_path}[{j}]", 1, BROADCAST_CA - 1, expected=expected)
        if ca in common_addresses:
            raise Invalid(f"{cas_path}[{j}]", "each common address once in the list", ca)
        common_addresses[ca] = None

    eps_path = join(path, "endpoints")
    eps = items(m.get("endpoints", MISSING), eps_path, "a list of 1 or 2 endpoints (primary, then backup)")
    if len(eps) > 2:
        raise Invalid(eps_path, "a list of 1 or 2 endpoints (primary, then backup)", eps)
    endpoints = tuple(endpoint(ep, f"{eps_path}[{j}]", ip_only=False) for j, ep in enumerate(eps))
    if len(endpoints) == 2 and endpoints[0] == endpoints[1]:
        raise Invalid(f"{eps_path}[1]", "a backup endpoint different from the primary", eps[1])

    interruptibility = m.get("interruptibility", MISSING)
    if not isinstance(interruptibility, str) or interruptibility not in INTERRUPTIBILITY:
        raise Invalid(join(path, "interruptibility"), " or ".join(INTERRUPTIBILITY), interruptibility)

    return SiteConfig(
        name=name,
        common_addresses=tuple(common_addresses),
        endpoints=endpoints,
        interruptibility=interruptibility,
        params=_link_params(m, path),
    )


def _parse_metrics(value: object, path: str) -> MetricsConfig:
    m = mapping({} if value is MISSING else value, path, _METRICS_KEYS)
    listen = endpoint(m.get("listen", DEFAULT_METRICS_LISTEN), join(path, "listen"), ip_only=True)
    return MetricsConfig(listen=listen)


_SECTIONS: dict[str, Callable[[object, str], Any]] = {
    "uplink": _parse_uplink,
    "sites": _parse_sites,
    "metrics": _parse_metrics,
}
# Sections whose parsers report errors themselves (they need the file name).
_OWN_SECTIONS = ("network", "multicast", "mqtt", "shedding", "ha", "incidents")
"""Top-level key -> parser(value or MISSING, key path); the result goes to the `Config` field of that name."""


def _check_listeners(uplink: UplinkConfig, metrics: MetricsConfig) -> None:
    a, b = uplink.listen, metrics.listen
    wildcard = ipaddress.ip_address(a.host).is_unspecified or ipaddress.ip_address(b.host).is_unspecified
    if a.port == b.port and (a.host == b.host or wildcard):
        raise Invalid("metrics.listen", f"an address and port other than uplink.listen ({a})", str(b))


# --------------------------------------------------------------------------- values


def _link_params(m: dict[str, object], path: str) -> LinkParams:
    """IEC defaults with the overrides found in `m`, checked by `LinkParams.problems()`."""
    d = LinkParams()

    def window(key: str, default: int) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(join(path, key), "an integer from 1 to 32767", value)
        return value  # the range is checked by LinkParams.problems()

    def timer(key: str, default: float) -> float:
        return seconds(m[key], join(path, key)) if key in m else default

    params = LinkParams(
        k=window("k", d.k),
        w=window("w", d.w),
        t0=timer("t0", d.t0),
        t1=timer("t1", d.t1),
        t2=timer("t2", d.t2),
        t3=timer("t3", d.t3),
    )
    for key, expected, got in params.problems():
        if key not in m:
            expected += f" ({key} is not set here, so its default applies)"
        raise Invalid(join(path, key), expected, got)
    return params
