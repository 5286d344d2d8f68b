"""The `ha:` section: a redundant pair of appliances under keepalived (VRRP).

    ha:
      node: conc-a                     # this appliance's name (logs, metrics, ha-status)
      priority: 150                    # 1..254; the higher one is master when both start
      virtual_router_id: 51            # 1..255, the same on both appliances
      advert_interval: 0.1             # seconds; below 1 s needs VRRPv3 (chosen by itself)
      preempt: never                   # never | seconds of delay before taking the role back
      uplink:                          # the BMI's side
        interface: bmi0
        virtual_address: 192.0.2.10/24 # what the BMI connects to (uplink.listen's host), or
                                       # its gateway to network.service_address
        peer: 192.0.2.12               # the other appliance's own address on this side
        also:                          # optional: more addresses of this side's instance, on
          - interface: bmi1            # other interfaces (the BMI's second path); they move
            virtual_address: 192.0.3.10/24   # with virtual_address, never on their own
      sites:                           # the UPDCs' side
        interface: lan0
        virtual_address: 198.51.100.10/24  # the relay's source address toward the UPDCs
        peer: 198.51.100.12
      authentication: none             # none | {password: "..."} (VRRPv2 only, see below)
      status_port: 9106                # read-only status the peer asks before taking over
      metrics_listen: "127.0.0.1:9107" # the HA supervisor's Prometheus metrics
      keepalived:                      # optional; these are the defaults
        config_file: /run/concentrator/keepalived.conf
        pid_file: /run/concentrator/keepalived.pid
        vrrp_pid_file: /run/concentrator/keepalived-vrrp.pid
        notify_fifo: /run/concentrator/keepalived.fifo

VRRP runs on both sides (two instances in one sync group), unicast to the peer: the
backup takes over only when the adverts stopped on both paths (docs/ha.md). VRRPv3
(RFC 5798), needed for sub-second adverts, has no authentication; keepalived's simple
password exists in VRRPv2 only, whose interval is whole seconds. The validator refuses
a password with a sub-second interval rather than let keepalived ignore it.

A side's `also` addresses belong to the same VRRP instance as its virtual_address (one
instance: they move together). The pair with two uplink paths uses them (docs/ha.md):
the relay listens on network.service_address (on lo of both appliances) and the BMI
routes it via the uplink's virtual address on each path, so only the master receives it.

Errors are `concentrator.configbase.ConfigError(file, key, expected, got)`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from concentrator.configbase import MISSING, ConfigError, Endpoint, Invalid, endpoint, in_file, integer, mapping

DEFAULT_STATUS_PORT = 9106
DEFAULT_METRICS_LISTEN = "127.0.0.1:9107"
_RUN = "/run/concentrator"
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_NODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PASSWORD = re.compile(r"[\x21-\x7e]{1,8}")  # VRRPv2 simple password: 8 printable octets

_TOP_KEYS = (
    "node",
    "priority",
    "virtual_router_id",
    "advert_interval",
    "preempt",
    "uplink",
    "sites",
    "authentication",
    "status_port",
    "metrics_listen",
    "keepalived",
)
_SIDE_KEYS = ("interface", "virtual_address", "peer", "also")
_ALSO_KEYS = ("interface", "virtual_address")
_KEEPALIVED_KEYS = ("config_file", "pid_file", "vrrp_pid_file", "notify_fifo")


@dataclass(frozen=True, slots=True)
class VirtualAddress:
    interface: str
    address: IPv4Interface  # address with its prefix length


@dataclass(frozen=True, slots=True)
class HaSide:
    """One side of the pair (uplink or sites): where VRRP runs and what moves."""

    name: str  # "uplink" or "sites"
    interface: str
    virtual_address: IPv4Interface  # address with its prefix length
    peer: IPv4Address
    also: tuple[VirtualAddress, ...] = ()  # more addresses of this instance, other interfaces

    @property
    def addresses(self) -> tuple[VirtualAddress, ...]:
        """Every address this side's instance holds while master."""
        return (VirtualAddress(self.interface, self.virtual_address), *self.also)


@dataclass(frozen=True, slots=True)
class KeepalivedFiles:
    config_file: str = f"{_RUN}/keepalived.conf"
    pid_file: str = f"{_RUN}/keepalived.pid"
    vrrp_pid_file: str = f"{_RUN}/keepalived-vrrp.pid"
    notify_fifo: str = f"{_RUN}/keepalived.fifo"


@dataclass(frozen=True, slots=True)
class HaConfig:
    node: str
    priority: int
    virtual_router_id: int
    advert_interval: float
    preempt_delay: float | None  # None: never take the role back (nopreempt)
    uplink: HaSide
    sites: HaSide
    password: str | None
    status_port: int
    metrics_listen: Endpoint
    keepalived: KeepalivedFiles

    @property
    def sides(self) -> tuple[HaSide, HaSide]:
        return (self.uplink, self.sites)

    @property
    def vrrp_version(self) -> int:
        return 2 if self.advert_interval >= 1 and self.advert_interval.is_integer() else 3


def parse_ha(value: object, file: str) -> HaConfig:
    """Validate the `ha:` section (the value under the key) of `file`."""
    with in_file(file):
        return _parse(value)


def _int(m: dict[str, Any], key: str, path: str, low: int, high: int, default: object = MISSING) -> int:
    return integer(m.get(key, default), f"{path}.{key}", low, high)


def _parse(value: object) -> HaConfig:
    m = mapping(value, "ha", _TOP_KEYS)
    node = m.get("node", MISSING)
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise Invalid("ha.node", "a name of 1-64 letters, digits, '_', '.', '-'", node)
    interval = m.get("advert_interval", 1)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        raise Invalid("ha.advert_interval", "a number of seconds from 0.01 to 40", interval)
    # VRRPv3 counts in centiseconds (0.01..40.95 s); VRRPv2 in whole seconds (1..255).
    if not 0.01 <= interval <= 40 or round(interval * 100) != interval * 100:
        raise Invalid("ha.advert_interval", "a number of seconds from 0.01 to 40 in steps of 0.01", interval)
    preempt = m.get("preempt", "never")
    if preempt == "never":
        delay = None
    elif isinstance(preempt, bool) or not isinstance(preempt, (int, float)) or not 0 <= preempt <= 1000:
        raise Invalid("ha.preempt", "never, or the seconds (0 to 1000) before taking the master role back", preempt)
    else:
        delay = float(preempt)
    uplink = _side(m.get("uplink", MISSING), "uplink")
    sites = _side(m.get("sites", MISSING), "sites")
    if uplink.interface == sites.interface:
        raise Invalid(
            "ha.sites.interface",
            f"an interface other than ha.uplink.interface ({uplink.interface}): VRRP must run on two paths",
            sites.interface,
        )
    seen: set[IPv4Address] = set()
    for side in (uplink, sites):
        for i, extra in enumerate(side.addresses):
            if extra.address.ip in seen:
                key = f"ha.{side.name}.virtual_address" if i == 0 else f"ha.{side.name}.also[{i - 1}].virtual_address"
                raise Invalid(key, "an address not given twice in ha:", str(extra.address))
            seen.add(extra.address.ip)
    password = _authentication(m.get("authentication", "none"), float(interval))
    metrics = endpoint(m.get("metrics_listen", DEFAULT_METRICS_LISTEN), "ha.metrics_listen", ip_only=True)
    return HaConfig(
        node=node,
        priority=_int(m, "priority", "ha", 1, 254),
        virtual_router_id=_int(m, "virtual_router_id", "ha", 1, 255),
        advert_interval=float(interval),
        preempt_delay=delay,
        uplink=uplink,
        sites=sites,
        password=password,
        status_port=_int(m, "status_port", "ha", 1, 65535, DEFAULT_STATUS_PORT),
        metrics_listen=metrics,
        keepalived=_keepalived(m.get("keepalived", {})),
    )


def _side(value: object, name: str) -> HaSide:
    path = f"ha.{name}"
    m = mapping(value, path, _SIDE_KEYS)
    interface = _interface(m, path)
    address = _virtual_address(m, path)
    also_raw = m.get("also", [])
    if not isinstance(also_raw, list):
        raise Invalid(f"{path}.also", "a list of {interface, virtual_address} mappings", also_raw)
    also = []
    for i, item in enumerate(also_raw):
        item_path = f"{path}.also[{i}]"
        extra = mapping(item, item_path, _ALSO_KEYS)
        also.append(VirtualAddress(_interface(extra, item_path), _virtual_address(extra, item_path)))
    peer = m.get("peer", MISSING)
    try:
        peer_ip = IPv4Address(peer) if isinstance(peer, str) else None
    except ValueError:
        peer_ip = None
    if peer_ip is None or peer_ip == address.ip:
        raise Invalid(f"{path}.peer", "the other appliance's own IPv4 address on this side (not the virtual one)", peer)
    if peer_ip not in address.network:
        raise Invalid(f"{path}.peer", f"an address in {address.network} (the virtual address's network)", peer)
    return HaSide(name, interface, address, peer_ip, tuple(also))


def _interface(m: dict[str, Any], path: str) -> str:
    interface = m.get("interface", MISSING)
    if not isinstance(interface, str) or not _IFNAME.fullmatch(interface):
        raise Invalid(f"{path}.interface", "an interface name of 1-15 characters", interface)
    return interface


def _virtual_address(m: dict[str, Any], path: str) -> IPv4Interface:
    vip = m.get("virtual_address", MISSING)
    try:
        address = IPv4Interface(vip) if isinstance(vip, str) and "/" in vip else None
    except ValueError:
        address = None
    if address is None or address.ip.is_multicast or address.ip.is_unspecified or address.ip.is_loopback:
        raise Invalid(f"{path}.virtual_address", 'a unicast IPv4 address with its prefix, as "192.0.2.10/24"', vip)
    return address


def _authentication(value: object, interval: float) -> str | None:
    if value == "none":
        return None
    m = mapping(value, "ha.authentication", ("password",))
    password = m.get("password", MISSING)
    if not isinstance(password, str) or not _PASSWORD.fullmatch(password):
        raise Invalid("ha.authentication.password", "1 to 8 printable ASCII characters (no spaces)", "(hidden)")
    if not (interval >= 1 and interval.is_integer()):
        raise Invalid(
            "ha.authentication",
            "none when advert_interval is below 1 s or fractional (VRRPv3, RFC 5798, "
            "has no authentication; a password needs VRRPv2 and whole seconds)",
            "a password",
        )
    return password


def _keepalived(value: object) -> KeepalivedFiles:
    m = mapping(value, "ha.keepalived", _KEEPALIVED_KEYS)
    paths = {}
    for key in _KEEPALIVED_KEYS:
        if key in m:
            path = m[key]
            if not isinstance(path, str) or not path.startswith("/") or "\n" in path or '"' in path:
                raise Invalid(f"ha.keepalived.{key}", "an absolute path", path)
            paths[key] = path
    return KeepalivedFiles(**paths)


def check_against_relay(ha: HaConfig, listen_host: str, file: str, service_address: IPv4Address | None) -> None:
    """The relay must listen on an address the BMI reaches only on the active appliance:
    the uplink's virtual address (an appliance that does not hold it cannot listen), or,
    with a `network:` section, its service address, which both appliances have on lo but
    the BMI routes via the uplink's virtual addresses (docs/ha.md): a stray relay on the
    backup could listen there and would hear nothing."""
    allowed = {ha.uplink.virtual_address.ip: "ha.uplink.virtual_address"}
    if service_address is not None:
        allowed[service_address] = "network.service_address"
    if ipaddress.ip_address(listen_host) not in allowed:
        expected = " or ".join(f"{ip} ({key})" for ip, key in allowed.items())
        raise ConfigError(file, "uplink.listen", f"the host {expected}", listen_host)
