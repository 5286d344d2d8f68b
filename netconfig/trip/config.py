"""The `multicast:` section (the operator's trip groups) and the pure logic around it.

The BMI sends trip messages (IEC 104 over UDP) as IP multicast. The concentrator must
not stand in their path: the kernel copies them, with nftables `dup` rules or static
(S,G) routes that smcroute installs (`engine`; netconfig.trip.capability chooses `auto` on the
kernel at hand), and no concentrator process ever joins a trip group.

    multicast:
      engine: auto                   # auto (the default), nftables or smcroute
      smcroute:                      # optional: where netd keeps smcrouted's files
        config_file: /run/concentrator/smcroute.conf
        socket: /run/concentrator/smcroute.sock
        pid_file: /run/concentrator/smcroute.pid
      groups:
        - group: 239.192.10.1        # the trip group (not 224.0.0.0/24: never routed)
          port: 2404                 # UDP port of the trip datagrams (diagnostics, tests)
          sources: [10.0.1.1]        # the BMI's senders: one kernel entry per (S,G)
          inbound: [up0, up1]        # uplink interfaces the group may arrive on
          outbound: [s1p, s1b, s2p, s2b]   # site interfaces it goes out on

When an inbound or outbound interface is a path of a link in `network:`, only the
link's active path is used: the kernel keeps one inbound interface per (S,G) (two
static rules do not give failover), and a site gets one copy, on the path its
routes use. Interfaces not under `network:` are used as listed (inbound: the first).

This module parses and checks the section (the package's __init__ says where the
rest of the trip path lives).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from concentrator.configbase import MISSING, ConfigError, read_yaml, repeated

from ..config import NetworkConfig, _Parser, parse_network

MAXVIFS = 32  # the kernel's limit of multicast virtual interfaces per table
_LINK_LOCAL = IPv4Network("224.0.0.0/24")  # never forwarded by a multicast router
_MULTICAST = IPv4Network("224.0.0.0/4")

DEFAULT_DIR = "/run/concentrator"


@dataclass(frozen=True, slots=True)
class SmcrouteFiles:
    """One smcrouted per namespace, each with its own files (DESIGN.md)."""

    config_file: str = f"{DEFAULT_DIR}/smcroute.conf"
    socket: str = f"{DEFAULT_DIR}/smcroute.sock"
    pid_file: str = f"{DEFAULT_DIR}/smcroute.pid"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    group: IPv4Address
    port: int
    sources: tuple[IPv4Address, ...]
    inbound: tuple[str, ...]
    outbound: tuple[str, ...]


AUTO, SMCROUTE, NFTABLES = "auto", "smcroute", "nftables"


@dataclass(frozen=True, slots=True)
class MulticastConfig:
    groups: tuple[GroupConfig, ...]
    smcroute: SmcrouteFiles = field(default_factory=SmcrouteFiles)
    # How the kernel copies trips: the multicast routing table through smcrouted (up
    # to MAXVIFS interfaces), or nftables `dup` at the uplinks' ingress (no limit);
    # as configured (AUTO too) until netconfig.trip.capability.resolve() chose on this kernel.
    engine: str = AUTO

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Every interface smcrouted must map to a VIF, in a stable order."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for name in (*g.inbound, *g.outbound):
                seen.setdefault(name)
        return tuple(seen)


# ---------------------------------------------------------------------- parsing

_TOP_KEYS = {"groups", "smcroute", "engine"}
_ENGINES = (AUTO, SMCROUTE, NFTABLES)
_GROUP_KEYS = {"group", "port", "sources", "inbound", "outbound"}
_FILES_KEYS = {"config_file", "socket", "pid_file"}


def parse_multicast(raw: object, file: str, network: NetworkConfig | None = None) -> MulticastConfig:
    """Validate the `multicast:` section (`raw` is its value, or MISSING).

    With `network` given, inbound interfaces must be paths of the uplink: the trip
    path has to follow the uplink's failover."""
    p = _Parser(file)
    m = p.mapping(raw, "multicast", _TOP_KEYS, {"groups"})
    files = SmcrouteFiles()
    if m.get("smcroute") is not None:
        f = p.mapping(m["smcroute"], "multicast.smcroute", _FILES_KEYS, set())
        values = {}
        for key in sorted(_FILES_KEYS):
            if key in f:
                v = f[key]
                if not isinstance(v, str) or not v.startswith("/"):
                    raise p.error(f"multicast.smcroute.{key}", "an absolute path", v)
                values[key] = v
        files = SmcrouteFiles(**values)
    groups_raw = m["groups"]
    if not isinstance(groups_raw, list) or not groups_raw:
        raise p.error("multicast.groups", "a non-empty list of trip groups", groups_raw)
    groups = tuple(_group(p, g, f"multicast.groups[{i}]") for i, g in enumerate(groups_raw))
    if network is not None and network.uplink is not None:
        uplink_ifs = {network.uplink.primary.interface, network.uplink.backup.interface}
        for i, g in enumerate(groups):
            for j, name in enumerate(g.inbound):
                if name not in uplink_ifs:
                    raise p.error(
                        f"multicast.groups[{i}].inbound[{j}]",
                        f"an uplink interface ({', '.join(sorted(uplink_ifs))})",
                        name,
                    )
    if network is not None:
        groups = tuple(_both_paths(g, network) for g in groups)

    seen: dict[IPv4Address, int] = {}
    for i, g in enumerate(groups):
        if g.group in seen:
            raise p.error(
                f"multicast.groups[{i}].group", f"a group not already in groups[{seen[g.group]}]", str(g.group)
            )
        seen[g.group] = i
    # An interface is inbound or outbound, never both: a trip must not be sent back
    # toward the BMI, and the kernel would count it as arriving on the wrong VIF.
    inbound_all = {name for g in groups for name in g.inbound}
    for i, g in enumerate(groups):
        for j, name in enumerate(g.outbound):
            if name in inbound_all:
                raise p.error(
                    f"multicast.groups[{i}].outbound[{j}]", "an interface that is not inbound for any group", name
                )
    engine = m.get("engine", AUTO)
    if engine not in _ENGINES:
        raise p.error("multicast.engine", " or ".join(_ENGINES), engine)
    count = len(MulticastConfig(groups).interfaces)
    # `auto` stays as written: the engine depends on the kernel too (netconfig.trip.capability).
    if engine == SMCROUTE and count > MAXVIFS:
        raise p.error(
            "multicast.groups",
            f"at most {MAXVIFS} interfaces in all with engine smcroute (the kernel's "
            "VIF limit; engine auto or nftables has none)",
            count,
        )
    cfg = MulticastConfig(groups, files, engine)
    return cfg


def _group(p: Any, raw: object, key: str) -> GroupConfig:
    m = p.mapping(raw, key, _GROUP_KEYS, _GROUP_KEYS)
    group = p.ipv4(m["group"], f"{key}.group")
    if group not in _MULTICAST or group in _LINK_LOCAL:
        raise p.error(
            f"{key}.group", "a multicast group in 224.0.1.0-239.255.255.255 (224.0.0.x is never routed)", m["group"]
        )
    port = m["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise p.error(f"{key}.port", "a UDP port from 1 to 65535", port)
    sources = _list(p, m["sources"], f"{key}.sources", "a non-empty list of the BMI's source addresses")
    srcs = tuple(p.ipv4(s, f"{key}.sources[{i}]") for i, s in enumerate(sources))
    again = repeated(srcs)
    for i, s in enumerate(srcs):
        if s.is_multicast or s.is_unspecified or s.is_loopback:
            raise p.error(f"{key}.sources[{i}]", "a unicast source address", str(s))
        if i == again:
            raise p.error(f"{key}.sources[{i}]", "a source listed once", str(s))
    inbound = _ifnames(p, m["inbound"], f"{key}.inbound", "a non-empty list of uplink interfaces")
    outbound = _ifnames(p, m["outbound"], f"{key}.outbound", "a non-empty list of site interfaces")
    return GroupConfig(group, port, srcs, inbound, outbound)


def _both_paths(g: GroupConfig, network: NetworkConfig) -> GroupConfig:
    """Only listed interfaces become VIFs, but the path in use replaces a listed path
    of a protected link: a list naming one path of a link would send nothing once the
    link switched. So each link's other path is added beside the one listed."""
    other = {}
    for link in network.links:
        other[link.primary.interface] = link.backup.interface
        other[link.backup.interface] = link.primary.interface

    def complete(names: tuple[str, ...]) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for name in names:
            out.setdefault(name)
            if name in other:
                out.setdefault(other[name])
        return tuple(out)

    return GroupConfig(g.group, g.port, g.sources, complete(g.inbound), complete(g.outbound))


def _list(p: Any, raw: object, key: str, expected: str) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise p.error(key, expected, raw)
    return raw


def _ifnames(p: Any, raw: object, key: str, expected: str) -> tuple[str, ...]:
    names = tuple(p.interface(v, f"{key}[{i}]") for i, v in enumerate(_list(p, raw, key, expected)))
    again = repeated(names)
    if again is not None:
        raise p.error(f"{key}[{again}]", "an interface listed once", names[again])
    return names


def parse_multicast_section(doc: Mapping[str, Any], file: str, network: NetworkConfig | None) -> MulticastConfig | None:
    """The section of a loaded document, or None when it has none."""
    raw = doc.get("multicast", MISSING)
    if raw is MISSING or raw is None:
        return None
    return parse_multicast(raw, file, network)


def load_multicast(path: str) -> tuple[MulticastConfig | None, NetworkConfig | None]:
    """Read the file's `multicast:` (and `network:`, which it must agree with)."""
    doc, _, _ = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(path, "(top level)", "a mapping", doc)
    network = parse_network(doc["network"], path) if doc.get("network") is not None else None
    return parse_multicast_section(doc, path, network), network
