"""The `multicast:` section (the operator's trip groups) and the pure logic around it.

The BMI sends trip messages (IEC 104 over UDP) as IP multicast. The concentrator must
not stand in their path: the kernel forwards them with static (S,G) routes that
smcroute installs, and no concentrator process ever joins a trip group.

    multicast:
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

This module has no I/O besides parsing text the caller read from /proc: the config,
the choice of interfaces, smcroute's configuration text, and the kernel's tables.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from concentrator.configbase import MISSING, ConfigError, read_yaml, repeated

from .config import NetworkConfig, _Parser, parse_network

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


@dataclass(frozen=True, slots=True)
class MulticastConfig:
    groups: tuple[GroupConfig, ...]
    smcroute: SmcrouteFiles = field(default_factory=SmcrouteFiles)

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Every interface smcrouted must map to a VIF, in a stable order."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for name in (*g.inbound, *g.outbound):
                seen.setdefault(name)
        return tuple(seen)


# ---------------------------------------------------------------------- parsing

_TOP_KEYS = {"groups", "smcroute"}
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

    seen: dict[IPv4Address, int] = {}
    for i, g in enumerate(groups):
        if g.group in seen:
            raise p.error(f"multicast.groups[{i}].group", f"a group not already in groups[{seen[g.group]}]",
                          str(g.group))
        seen[g.group] = i
    # An interface is inbound or outbound, never both: a trip must not be sent back
    # toward the BMI, and the kernel would count it as arriving on the wrong VIF.
    inbound_all = {name for g in groups for name in g.inbound}
    for i, g in enumerate(groups):
        for j, name in enumerate(g.outbound):
            if name in inbound_all:
                raise p.error(f"multicast.groups[{i}].outbound[{j}]", "an interface that is not inbound for any group",
                              name)
    cfg = MulticastConfig(groups, files)
    if len(cfg.interfaces) > MAXVIFS:
        raise p.error("multicast.groups", f"at most {MAXVIFS} interfaces in all (the kernel's VIF limit)",
                      len(cfg.interfaces))
    if network is not None and network.uplink is not None:
        uplink_ifs = {network.uplink.primary.interface, network.uplink.backup.interface}
        for i, g in enumerate(groups):
            for j, name in enumerate(g.inbound):
                if name not in uplink_ifs:
                    raise p.error(f"multicast.groups[{i}].inbound[{j}]",
                                  f"an uplink interface ({', '.join(sorted(uplink_ifs))})", name)
    return cfg


def _group(p: Any, raw: object, key: str) -> GroupConfig:
    m = p.mapping(raw, key, _GROUP_KEYS, _GROUP_KEYS)
    group = p.ipv4(m["group"], f"{key}.group")
    if group not in _MULTICAST or group in _LINK_LOCAL:
        raise p.error(f"{key}.group", "a multicast group in 224.0.1.0-239.255.255.255 (224.0.0.x is never routed)",
                      m["group"])
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


# ---------------------------------------------------------------------- routes wanted


@dataclass(frozen=True, slots=True, order=True)
class MRoute:
    """One kernel forwarding entry: (source, group), one inbound interface."""

    source: IPv4Address
    group: IPv4Address
    inbound: str
    outbound: tuple[str, ...]


def choose(names: tuple[str, ...], active_path: Mapping[str, str | None]) -> tuple[str, ...]:
    """Keep the interfaces to use now: for those that are a path of a managed link,
    only the active one; `active_path` maps interface -> the active interface of its
    link (absent: unmanaged, kept)."""
    out: dict[str, None] = {}
    for name in names:
        if name not in active_path:
            out.setdefault(name)
        else:
            active = active_path[name]
            if active is not None:
                out.setdefault(active)
    return tuple(out)


def wanted_routes(cfg: MulticastConfig, active_path: Mapping[str, str | None]) -> list[MRoute]:
    """The (S,G) entries the kernel should hold given the links' active paths."""
    routes = []
    for g in cfg.groups:
        inbound = choose(g.inbound, active_path)
        # Several unmanaged inbound interfaces: the first listed (one per (S,G)).
        iif = inbound[0] if inbound else g.inbound[0]
        outs = choose(g.outbound, active_path)
        for s in g.sources:
            routes.append(MRoute(s, g.group, iif, outs))
    return sorted(routes)


def smcroute_conf(cfg: MulticastConfig, routes: list[MRoute]) -> str:
    """smcrouted's configuration: only our interfaces become VIFs (it runs with -N),
    no mgroup (joining is never needed for static forwarding, and is forbidden), no
    mrdisc; and the routes, so that a restarted smcrouted installs them by itself."""
    lines = ["# written by concentrator netd: do not edit (rewritten on every switch)"]
    lines += [f"phyint {name} enable" for name in cfg.interfaces]
    lines += [
        f"mroute from {r.inbound} source {r.source} group {r.group} to {' '.join(r.outbound)}"
        for r in routes
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- kernel tables


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """One line of /proc/net/ip_mr_cache, with VIF numbers resolved to names."""

    group: IPv4Address
    source: IPv4Address
    inbound: str | None       # None: unresolved entry (no route, packets queued)
    packets: int
    bytes: int
    wrong_if: int             # packets that arrived on another interface than `inbound`
    outbound: tuple[str, ...]


def _addr(hexword: str) -> IPv4Address:
    # The kernel prints the network-order word as a native integer (%08X).
    return IPv4Address(socket.inet_ntoa(struct.pack("=I", int(hexword, 16))))


def parse_vifs(text: str) -> dict[int, str]:
    """/proc/net/ip_mr_vif: VIF number -> interface name."""
    vifs = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            vifs[int(parts[0])] = parts[1]
    return vifs


def parse_mr_cache(text: str, vifs: Mapping[int, str]) -> list[KernelEntry]:
    """/proc/net/ip_mr_cache: Group Origin Iif Pkts Bytes Wrong Oifs(vif:ttl ...)."""
    entries = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6:
            continue
        iif = int(parts[2])
        outs = tuple(vifs.get(int(o.split(":")[0]), f"vif{o.split(':')[0]}") for o in parts[6:] if ":" in o)
        entries.append(KernelEntry(
            _addr(parts[0]), _addr(parts[1]),
            None if iif < 0 or iif == 65535 else vifs.get(iif, f"vif{iif}"),
            int(parts[3]), int(parts[4]), int(parts[5]), outs,
        ))
    return entries


@dataclass(frozen=True, slots=True)
class PathStatus:
    """What the kernel does with one (S,G) of the configuration."""

    group: IPv4Address
    source: IPv4Address
    installed: bool
    inbound: str | None
    outbound: tuple[str, ...]
    packets: int
    wrong_if: int
    expected_inbound: tuple[str, ...]
    expected_outbound: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return (self.installed and self.inbound in self.expected_inbound
                and bool(self.outbound) and set(self.outbound) <= set(self.expected_outbound))

    def to_json(self) -> dict[str, Any]:
        return {
            "group": str(self.group), "source": str(self.source), "installed": self.installed,
            "ok": self.ok, "inbound": self.inbound, "outbound": list(self.outbound),
            "packets_forwarded": self.packets, "wrong_interface": self.wrong_if,
            "allowed_inbound": list(self.expected_inbound), "allowed_outbound": list(self.expected_outbound),
        }


def path_status(cfg: MulticastConfig, entries: list[KernelEntry]) -> list[PathStatus]:
    by_sg = {(e.source, e.group): e for e in entries}
    out = []
    for g in cfg.groups:
        for s in g.sources:
            e = by_sg.get((s, g.group))
            # An unresolved entry (a packet arrived, no route) has no outbound VIF.
            installed = e is not None and e.inbound is not None and bool(e.outbound)
            out.append(PathStatus(
                g.group, s, installed,
                e.inbound if e else None, e.outbound if e else (),
                e.packets if e else 0, e.wrong_if if e else 0,
                g.inbound, g.outbound,
            ))
    return out


def load_multicast(path: str) -> tuple[MulticastConfig | None, NetworkConfig | None]:
    """Read the file's `multicast:` (and `network:`, which it must agree with)."""
    doc, _, _ = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(path, "(top level)", "a mapping", doc)
    network = parse_network(doc["network"], path) if doc.get("network") is not None else None
    return parse_multicast_section(doc, path, network), network
