"""The `multicast:` section (the operator's trip groups) and the pure logic around it.

The BMI sends trip messages (IEC 104 over UDP) as IP multicast. The concentrator must
not stand in their path: the kernel copies them, with nftables `dup` rules or static
(S,G) routes that smcroute installs (`engine`; netconfig.tripcap chooses `auto` on the
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
    # as configured (AUTO too) until netconfig.tripcap.resolve() chose on this kernel.
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
    # `auto` stays as written: the engine depends on the kernel too (netconfig.tripcap).
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
    lines += [f"mroute from {r.inbound} source {r.source} group {r.group} to {' '.join(r.outbound)}" for r in routes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- nftables engine

NFT_TABLE = "concentrator_trip"  # table netdev concentrator_trip


def nft_chain(cfg: MulticastConfig, source: IPv4Address, group: IPv4Address) -> str:
    """The chain that copies one (S,G) (stable: its place in the configuration)."""
    i = 0
    for g in cfg.groups:
        for s in g.sources:
            if (s, g.group) == (source, group):
                return f"sg{i}"
            i += 1
    raise KeyError((source, group))


def nft_inbound_rule(route: MRoute, active: bool, chain: str) -> str:
    """On an uplink's ingress: the path in use jumps to the copies; the other counts
    the trip as a wrong-interface arrival and drops it (as the multicast routing table
    does: one inbound interface per (S,G), re-pointed on a switch)."""
    match = f"ip saddr {route.source} ip daddr {route.group}"
    if active:
        return f'{match} counter jump {chain} comment "{route.source} {route.group} in"'
    return f'{match} counter drop comment "{route.source} {route.group} wrong"'


def nft_copy_rule(ifname: str) -> str:
    return f'counter dup to "{ifname}" comment "out"'


def nft_ruleset(cfg: MulticastConfig, routes: list[MRoute]) -> str:
    """The whole table, loaded in one transaction (replacing any earlier one).

    A netdev ingress chain on each uplink interface; per (S,G) a chain with one `dup`
    per site path in use, then `drop` (the concentrator itself never takes a trip).
    `dup` in netdev clones the frame as received and transmits it on the site's
    interface: destination MAC the group's, IP header untouched (TTL too). The site
    interfaces need no multicast routing and there is no limit of interfaces."""
    inbound = dict.fromkeys(n for g in cfg.groups for n in g.inbound)
    lines = [f"table netdev {NFT_TABLE} {{}}", f"delete table netdev {NFT_TABLE}", f"table netdev {NFT_TABLE} {{"]
    for ifname in inbound:
        lines += [
            f"  chain in_{ifname} {{",
            f'    type filter hook ingress device "{ifname}" priority 0; policy accept;',
        ]
        for r in routes:
            lines.append("    " + nft_inbound_rule(r, r.inbound == ifname, nft_chain(cfg, r.source, r.group)))
        lines.append("  }")
    for r in routes:
        lines.append(f"  chain {nft_chain(cfg, r.source, r.group)} {{")
        lines += ["    " + nft_copy_rule(name) for name in r.outbound]
        lines += ['    counter drop comment "end"', "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_error(stderr: str) -> str:
    """nft's error on one line: the message and the rule it points at (not the carets)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip().strip("^~")]
    return ": ".join(lines[:2]) if lines else "no message"


@dataclass(frozen=True, slots=True)
class NftRule:
    chain: str
    handle: int
    comment: str
    packets: int
    target: str | None  # jump target, or the dup device


def parse_nft(doc: Mapping[str, Any]) -> list[NftRule]:
    """`nft -j list table netdev concentrator_trip`: our rules with handles and counts."""
    rules = []
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if rule is None:
            continue
        packets, target = 0, None
        for expr in rule.get("expr", []):
            if "counter" in expr:
                packets = int(expr["counter"]["packets"])
            elif "jump" in expr:
                target = expr["jump"]["target"]
            elif "dup" in expr:
                target = expr["dup"]["dev"] if "dev" in expr["dup"] else expr["dup"]["addr"]
        rules.append(NftRule(rule["chain"], int(rule["handle"]), rule.get("comment", ""), packets, target))
    return rules


def nft_entries(cfg: MulticastConfig, rules: list[NftRule]) -> list[KernelEntry]:
    """Our nftables rules seen as the kernel's multicast table sees an (S,G), so that
    both engines are judged alike (path_status): inbound = the uplink whose chain
    jumps to the copies, outbound = the copy rules' devices, packets = every arrival,
    wrong_if = arrivals counted and dropped on the other uplinks."""
    entries = []
    for g in cfg.groups:
        for s in g.sources:
            chain = nft_chain(cfg, s, g.group)
            inbound, packets, wrong = None, 0, 0
            for r in rules:
                if r.comment == f"{s} {g.group} in" and r.target == chain:
                    inbound, packets = r.chain.removeprefix("in_"), packets + r.packets
                elif r.comment == f"{s} {g.group} wrong":
                    packets, wrong = packets + r.packets, wrong + r.packets
            outbound = tuple(r.target for r in rules if r.chain == chain and r.comment == "out" and r.target)
            if inbound is not None or outbound:
                entries.append(KernelEntry(g.group, s, inbound, packets, 0, wrong, outbound))
    return entries


# ---------------------------------------------------------------------- kernel tables


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """One line of /proc/net/ip_mr_cache, with VIF numbers resolved to names."""

    group: IPv4Address
    source: IPv4Address
    inbound: str | None  # None: unresolved entry (no route, packets queued)
    packets: int
    bytes: int
    wrong_if: int  # packets that arrived on another interface than `inbound`
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
        entries.append(
            KernelEntry(
                _addr(parts[0]),
                _addr(parts[1]),
                None if iif < 0 or iif == 65535 else vifs.get(iif, f"vif{iif}"),
                int(parts[3]),
                int(parts[4]),
                int(parts[5]),
                outs,
            )
        )
    return entries


@dataclass(frozen=True, slots=True)
class PathStatus:
    """What the kernel does with one (S,G) of the configuration, judged against the
    paths in use: inbound must be exactly the uplink path in use, outbound exactly
    each member site's path in use, and no trip may have arrived on another
    interface since the last check (the BMI sends where we do not listen)."""

    group: IPv4Address
    source: IPv4Address
    installed: bool
    inbound: str | None
    outbound: tuple[str, ...]
    forwarded: int  # packets the entry forwarded (arrivals on its inbound interface)
    wrong_if: int  # arrivals on another interface, dropped, since the entry exists
    wrong_if_new: int  # of those, since the last check
    expected_inbound: str
    expected_outbound: tuple[str, ...]

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.installed:
            return ["no forwarding entry in the kernel: trips are not forwarded"]
        if self.inbound != self.expected_inbound:
            out.append(
                f"in on {self.inbound}, but the uplink path in use is {self.expected_inbound}: "
                f"trips arriving on {self.expected_inbound} are dropped"
            )
        missing = [n for n in self.expected_outbound if n not in self.outbound]
        extra = [n for n in self.outbound if n not in self.expected_outbound]
        if missing:
            out.append(f"not sent on {', '.join(missing)} (path in use of a member site)")
        if extra:
            out.append(
                f"sent on {', '.join(extra)}, not a site path in use (a site would get two copies "
                "or a copy on a dead path)"
            )
        if self.wrong_if_new:
            out.append(
                f"{self.wrong_if_new} trips arrived on another interface than {self.inbound} since the "
                "last check and were dropped"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "group": str(self.group),
            "source": str(self.source),
            "installed": self.installed,
            "ok": self.ok,
            "problems": self.problems,
            "inbound": self.inbound,
            "outbound": list(self.outbound),
            "expected_inbound": self.expected_inbound,
            "expected_outbound": list(self.expected_outbound),
            "packets_forwarded": self.forwarded,
            "wrong_interface": self.wrong_if,
            "wrong_interface_since_last_check": self.wrong_if_new,
        }


Counters = Mapping[tuple[IPv4Address, IPv4Address], tuple[str | None, int]]


def path_status(
    cfg: MulticastConfig,
    entries: list[KernelEntry],
    active_path: Mapping[str, str | None],
    last: Counters | None = None,
) -> list[PathStatus]:
    """Judge the kernel's entries against the routes wanted for the paths in use
    (`active_path`, as for wanted_routes). `last` holds, per (S,G), the inbound
    interface and wrong-interface count seen at the last check (None: no earlier
    check, every wrong-interface arrival counts as new)."""
    by_sg = {(e.source, e.group): e for e in entries}
    wanted = {(r.source, r.group): r for r in wanted_routes(cfg, active_path)}
    out = []
    for g in cfg.groups:
        for s in g.sources:
            e = by_sg.get((s, g.group))
            want = wanted[(s, g.group)]
            # An unresolved entry (a packet arrived, no route) has no outbound VIF.
            installed = e is not None and e.inbound is not None and bool(e.outbound)
            wrong = e.wrong_if if e else 0
            before = (last or {}).get((s, g.group))
            # The kernel counts from zero for each new entry (a re-point makes one):
            # a lower count or another inbound interface is a new entry.
            new = (
                wrong
                if before is None or before[0] != (e.inbound if e else None) or before[1] > wrong
                else wrong - before[1]
            )
            out.append(
                PathStatus(
                    g.group,
                    s,
                    installed,
                    e.inbound if e else None,
                    e.outbound if e else (),
                    # The kernel's packet count includes wrong-interface arrivals.
                    (e.packets - e.wrong_if) if e else 0,
                    wrong,
                    new,
                    want.inbound,
                    want.outbound,
                )
            )
    return out


def counters(status: list[PathStatus]) -> dict[str, Any]:
    """What the next check compares against (JSON: "source group" -> [inbound, wrong])."""
    return {f"{st.source} {st.group}": [st.inbound, st.wrong_if] for st in status}


def parse_counters(doc: Mapping[str, Any]) -> dict[tuple[IPv4Address, IPv4Address], tuple[str | None, int]]:
    out = {}
    for key, (inbound, wrong) in doc.items():
        source, group = key.split()
        out[(IPv4Address(source), IPv4Address(group))] = (inbound, int(wrong))
    return out


def load_multicast(path: str) -> tuple[MulticastConfig | None, NetworkConfig | None]:
    """Read the file's `multicast:` (and `network:`, which it must agree with)."""
    doc, _, _ = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(path, "(top level)", "a mapping", doc)
    network = parse_network(doc["network"], path) if doc.get("network") is not None else None
    return parse_multicast_section(doc, path, network), network
