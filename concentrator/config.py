"""Configuration: load and validate the concentrator's local YAML file.

The file is the only way to configure the appliance (no network interface changes it).
Every problem is reported as a `ConfigError` naming the file, the key path
(`uplink.listen`, `sites[3].endpoints[1]`) and what was expected there. Unknown keys
are errors, so that a typo cannot pass silently, and so are keys given twice.

Each top-level section has one parser in `_SECTIONS`; adding a section means writing
its parser, adding it there and adding the matching field to `Config`. The `network:`
section belongs to the link manager (netconfig/config.py), which also reads it alone.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from concentrator.iec104.link import LinkParams

if TYPE_CHECKING:
    from concentrator.mirror.config import MqttConfig
    from netconfig.config import NetworkConfig
    from netconfig.ha_config import HaConfig
    from netconfig.multicast import MulticastConfig

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
    "BROADCAST_CA",
]

INTERRUPTIBILITY = ("instantaneous", "emergency")
BROADCAST_CA = 65535
DEFAULT_METRICS_LISTEN = "127.0.0.1:9104"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING
"""Stands for a key that is absent (as opposed to present with a null value)."""


class ConfigError(Exception):
    """A configuration problem: which file, which key, what was expected, what was found.

    `str(e)` is `"{file}: {key}: expected {expected}, got {got!r}"`, or ends in
    `"missing"` when the key is absent. For YAML syntax errors `key` is
    `"line L, column C"` and `line` holds L; for an unreadable file `key` is `"(file)"`.
    """

    def __init__(
        self, file: str, key: str, expected: str, got: object = MISSING, *, line: int | None = None
    ) -> None:
        super().__init__(file, key, expected, got)
        self.file = file
        self.key = key
        self.expected = expected
        self.got = got
        self.line = line

    @property
    def missing(self) -> bool:
        return self.got is MISSING

    def __str__(self) -> str:
        found = "missing" if self.missing else f"got {self.got!r}"
        return f"{self.file}: {self.key}: expected {self.expected}, {found}"


@dataclass(frozen=True)
class Endpoint:
    """A TCP endpoint. `host` is an IP address (IPv6 without brackets) or a host name."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class UplinkConfig:
    """The listening side toward the BMI (the concentrator is the controlled station)."""

    listen: Endpoint
    allowed_peers: tuple[IPNetwork, ...]
    params: LinkParams

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
    ha: HaConfig | None = None  # a redundant pair under keepalived (netconfig/ha_config.py), if present
    _by_ca: dict[int, SiteConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_ca = {ca: site for site in self.sites for ca in site.common_addresses}
        object.__setattr__(self, "_by_ca", by_ca)

    def site_for(self, common_address: int) -> SiteConfig | None:
        """The site owning `common_address`; None if unknown (and for broadcast)."""
        return self._by_ca.get(common_address)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML file at `path`."""
    file = os.fspath(path)
    data, raw, mtime = read_yaml(file)
    return parse_config(data, file, sha256=hashlib.sha256(raw).hexdigest(), mtime=mtime)


def read_yaml(file: str) -> tuple[object, bytes, float]:
    """The document in `file` (strict YAML: no key twice), its raw bytes and mtime.
    The link manager reads the same file this way for its own section."""
    try:
        with open(file, "rb") as f:
            raw = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError as e:
        raise ConfigError(file, "(file)", "a readable YAML file", e.strerror or str(e)) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        got = f"byte {raw[e.start]:#04x} at offset {e.start}"
        raise ConfigError(file, "(file)", "UTF-8 text", got) from e
    return _load_yaml(text, file), raw, mtime


def parse_config(data: object, file: str, *, sha256: str = "", mtime: float = 0.0) -> Config:
    """Validate an already-loaded document (a mapping) and build the `Config`."""
    try:
        top = _mapping(data, "", [*_SECTIONS, *_OWN_SECTIONS])
        sections = {name: parse(top.get(name, MISSING), name) for name, parse in _SECTIONS.items()}
        _check_listeners(sections["uplink"], sections["metrics"])
    except _Invalid as e:
        raise ConfigError(file, e.key or "(top level)", e.expected, e.got) from None
    network = None if top.get("network", MISSING) is MISSING else _parse_network(top["network"], file)
    multicast = None
    if top.get("multicast", MISSING) is not MISSING:
        multicast = _parse_multicast(top["multicast"], file, network)
    mqtt = None
    if top.get("mqtt", MISSING) is not MISSING:
        mqtt = _parse_mqtt(top["mqtt"], file, [site.name for site in sections["sites"]])
    ha = None
    if top.get("ha", MISSING) is not MISSING:
        ha = _parse_ha(top["ha"], file, sections["uplink"])
    return Config(file=file, sha256=sha256, mtime=mtime, network=network, multicast=multicast, mqtt=mqtt, ha=ha,
                  **sections)


def _parse_network(value: object, file: str) -> NetworkConfig:
    # The link manager owns its section and its parser (it runs without the relay);
    # imported here, not at the top, because that parser imports this module.
    from netconfig.config import parse_network

    return parse_network(value, file)


def _parse_multicast(value: object, file: str, network: NetworkConfig | None) -> MulticastConfig:
    # Like `network:`: the link manager drives the trip path and owns the parser.
    from netconfig.multicast import parse_multicast

    return parse_multicast(value, file, network)


def _parse_mqtt(value: object, file: str, sites: list[str]) -> MqttConfig:
    # The mirror owns its section (and imports this module for ConfigError).
    from concentrator.mirror.config import parse_mqtt

    return parse_mqtt(value, file, sites)


def _parse_ha(value: object, file: str, uplink: UplinkConfig) -> HaConfig:
    # The HA supervisor owns its section (netconfig/ha_config.py).
    from netconfig.ha_config import check_against_relay, parse_ha

    ha = parse_ha(value, file)
    check_against_relay(ha, uplink.listen.host, file)
    return ha


def listen_endpoint(value: object, file: str, key: str) -> Endpoint:
    """An IP "host:port" to listen on, for sections parsed outside this module."""
    try:
        return _endpoint(value, key, ip_only=True)
    except _Invalid as e:
        raise ConfigError(file, e.key, e.expected, e.got) from None


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: object, first: Any, again: Any) -> None:
        super().__init__(None, None, f"found duplicate key {key!r}", again)
        self.key = key
        self.first = first


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _DuplicateKeyError(key, seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, file: str) -> object:
    def error(line: int, column: int, expected: str, got: object) -> ConfigError:
        return ConfigError(file, f"line {line}, column {column}", expected, got, line=line)

    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKeyError as e:
        expected = f"each key once per mapping (first at line {e.first.line + 1})"
        raise error(e.problem_mark.line + 1, e.problem_mark.column + 1, expected, e.key) from None
    except yaml.reader.ReaderError as e:  # a character YAML refuses: a position, no mark
        line = text.count("\n", 0, e.position) + 1
        column = e.position - text.rfind("\n", 0, e.position)
        got = f"character U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise error(line, column, "valid YAML", got) from None
    except yaml.MarkedYAMLError as e:
        mark, problem = e.problem_mark or e.context_mark, e.problem or ""
        if e.context:  # e.g. "while parsing a flow sequence (line 3), expected ',' or ']' ..."
            elsewhere = e.context_mark is not None and mark is not None and e.context_mark.line != mark.line
            problem = e.context + (f" (line {e.context_mark.line + 1})" if elsewhere else "") + ", " + problem
        if mark is None:
            raise ConfigError(file, "(file)", "valid YAML", problem) from None
        raise error(mark.line + 1, mark.column + 1, "valid YAML", problem) from None
    except yaml.YAMLError as e:
        raise ConfigError(file, "(file)", "valid YAML", str(e)) from None


# --------------------------------------------------------------------------- sections


class _Invalid(Exception):
    """Raised by the parsers below; `parse_config` adds the file name."""

    def __init__(self, key: str, expected: str, got: object) -> None:
        super().__init__(key, expected, got)
        self.key = key
        self.expected = expected
        self.got = got


_LINK_KEYS = ("k", "w", "t0", "t1", "t2", "t3")
_UPLINK_KEYS = ("listen", "allowed_peers", *_LINK_KEYS)
_SITE_KEYS = ("name", "common_addresses", "endpoints", "interruptibility", *_LINK_KEYS)
_METRICS_KEYS = ("listen",)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_uplink(value: object, path: str) -> UplinkConfig:
    m = _mapping(value, path, _UPLINK_KEYS)
    listen = _endpoint(m.get("listen", MISSING), _join(path, "listen"), ip_only=True)
    peers_path = _join(path, "allowed_peers")
    peers = _list(m.get("allowed_peers", MISSING), peers_path, "a non-empty list of IP addresses or networks")
    allowed = tuple(_network(peer, f"{peers_path}[{i}]") for i, peer in enumerate(peers))
    return UplinkConfig(listen=listen, allowed_peers=allowed, params=_link_params(m, path))


def _parse_sites(value: object, path: str) -> tuple[SiteConfig, ...]:
    items = _list(value, path, "a non-empty list of sites")
    sites: list[SiteConfig] = []
    names: dict[str, int] = {}
    owners: dict[int, int] = {}
    for i, item in enumerate(items):
        site_path = f"{path}[{i}]"
        site = _parse_site(item, site_path)
        if site.name in names:
            expected = f"a name no other site has ({path}[{names[site.name]}] has it)"
            raise _Invalid(f"{site_path}.name", expected, site.name)
        names[site.name] = i
        for j, ca in enumerate(site.common_addresses):
            if ca in owners:
                other = sites[owners[ca]]
                expected = (
                    f"common addresses unique across all sites "
                    f"({site.name} and {other.name} at {path}[{owners[ca]}] both have it)"
                )
                raise _Invalid(f"{site_path}.common_addresses[{j}]", expected, ca)
            owners[ca] = i
        sites.append(site)
    return tuple(sites)


def _parse_site(value: object, path: str) -> SiteConfig:
    m = _mapping(value, path, _SITE_KEYS)
    name = m.get("name", MISSING)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Invalid(_join(path, "name"), "a non-empty name of letters, digits, '_', '.', '-'", name)

    cas_path = _join(path, "common_addresses")
    cas = _list(m.get("common_addresses", MISSING), cas_path, "a non-empty list of common addresses")
    common_addresses: list[int] = []
    for j, item in enumerate(cas):
        expected = "a common address from 1 to 65534 (65535 is broadcast)"
        ca = _integer(item, f"{cas_path}[{j}]", expected, 1, 65534)
        if ca in common_addresses:
            raise _Invalid(f"{cas_path}[{j}]", "each common address once in the list", ca)
        common_addresses.append(ca)

    eps_path = _join(path, "endpoints")
    eps = _list(m.get("endpoints", MISSING), eps_path, "a list of 1 or 2 endpoints (primary, then backup)")
    if len(eps) > 2:
        raise _Invalid(eps_path, "a list of 1 or 2 endpoints (primary, then backup)", eps)
    endpoints = tuple(_endpoint(ep, f"{eps_path}[{j}]", ip_only=False) for j, ep in enumerate(eps))
    if len(endpoints) == 2 and endpoints[0] == endpoints[1]:
        raise _Invalid(f"{eps_path}[1]", "a backup endpoint different from the primary", eps[1])

    interruptibility = m.get("interruptibility", MISSING)
    if not isinstance(interruptibility, str) or interruptibility not in INTERRUPTIBILITY:
        raise _Invalid(_join(path, "interruptibility"), " or ".join(INTERRUPTIBILITY), interruptibility)

    return SiteConfig(
        name=name,
        common_addresses=tuple(common_addresses),
        endpoints=endpoints,
        interruptibility=interruptibility,
        params=_link_params(m, path),
    )


def _parse_metrics(value: object, path: str) -> MetricsConfig:
    m = _mapping({} if value is MISSING else value, path, _METRICS_KEYS)
    listen = _endpoint(m.get("listen", DEFAULT_METRICS_LISTEN), _join(path, "listen"), ip_only=True)
    return MetricsConfig(listen=listen)


_SECTIONS: dict[str, Callable[[object, str], Any]] = {
    "uplink": _parse_uplink,
    "sites": _parse_sites,
    "metrics": _parse_metrics,
}
# Sections whose parsers report errors themselves (they need the file name).
_OWN_SECTIONS = ("network", "multicast", "mqtt", "ha")
"""Top-level key -> parser(value or MISSING, key path); the result goes to the `Config` field of that name."""


def _check_listeners(uplink: UplinkConfig, metrics: MetricsConfig) -> None:
    a, b = uplink.listen, metrics.listen
    wildcard = ipaddress.ip_address(a.host).is_unspecified or ipaddress.ip_address(b.host).is_unspecified
    if a.port == b.port and (a.host == b.host or wildcard):
        raise _Invalid("metrics.listen", f"an address and port other than uplink.listen ({a})", str(b))


# --------------------------------------------------------------------------- values


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: object, path: str, allowed: Collection[str]) -> dict[str, object]:
    """Check that `value` is a mapping whose keys are all in `allowed`."""
    keys = ", ".join(allowed)
    if not isinstance(value, dict):
        raise _Invalid(path, f"a mapping with keys {keys}", value)
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            where = path or "the top level"
            raise _Invalid(_join(path, str(key)), f"a key allowed in {where} ({keys})", key)
    return value


def _list(value: object, path: str, expected: str) -> list[object]:
    if not isinstance(value, list) or not value:
        raise _Invalid(path, expected, value)
    return value


def _integer(value: object, path: str, expected: str, low: int, high: int) -> int:
    # bool is a subclass of int: YAML's `yes`/`true` must not pass as a number.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(path, expected, value)
    return value


def _seconds(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(path, "a number of seconds", value)
    return float(value)


def _link_params(m: dict[str, object], path: str) -> LinkParams:
    """IEC defaults with the overrides found in `m`, checked by `LinkParams.problems()`."""
    d = LinkParams()

    def window(key: str, default: int) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(_join(path, key), "an integer from 1 to 32767", value)
        return value  # the range is checked by LinkParams.problems()

    def timer(key: str, default: float) -> float:
        return _seconds(m[key], _join(path, key)) if key in m else default

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
        raise _Invalid(_join(path, key), expected, got)
    return params


def _endpoint(value: object, path: str, *, ip_only: bool) -> Endpoint:
    """Parse "host:port" / "[v6]:port"; `ip_only` refuses host names (listen addresses)."""
    if not isinstance(value, str):
        raise _Invalid(path, '"host:port" as quoted text (IPv6 as "[::1]:2404")', value)
    host, colon, port_text = value.rpartition(":")
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise _Invalid(path, '"host:port" with a port from 1 to 65535', value)
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return Endpoint(str(ipaddress.IPv6Address(host[1:-1])), port)
        except ValueError:
            raise _Invalid(path, 'an IPv6 address in brackets, as "[::1]:2404"', value) from None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ip_only:
            raise _Invalid(path, 'an IP address and port, as "0.0.0.0:2404" or "[::]:2404"', value) from None
        if not _is_hostname(host):
            raise _Invalid(path, "an IP address or host name, then ':' and a port", value) from None
        return Endpoint(host.lower(), port)
    if ip.version == 6:
        raise _Invalid(path, 'an IPv6 address in brackets, as "[::1]:2404"', value)
    return Endpoint(str(ip), port)


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    # An all-digit last label is a mistyped IPv4 address (e.g. 192.0.2.300), not a name.
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _network(value: object, path: str) -> IPNetwork:
    expected = 'an IP address or network, as "10.1.0.10" or "10.1.0.0/24"'
    if not isinstance(value, str):
        raise _Invalid(path, expected, value)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(path, expected, value) from None
    raise _Invalid(path, f"a network without host bits ({loose}?)", value)
