"""Non-interposition in trips: the kernel's view, the processes' sockets, the captured datagrams.

Read-only: the trip path engine chosen on this kernel (netconfig.trip.capability) and its own
rules and counters (nftables' table, or the multicast routing table in /proc/net),
/proc/net (IGMP memberships, sockets), /proc/<pid>/fd of the concentrator's
processes, `ip maddr show`. With `--lab` (evidence.lab) the relay is stopped for a
moment to show that trips keep flowing.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import struct
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from netconfig.config import NetworkConfig
from netconfig.trip.capability import probe, resolve
from netconfig.trip.config import SMCROUTE, MulticastConfig
from netconfig.trip.plan import wanted_routes
from netconfig.trip.render import NFT_TABLE
from netconfig.trip.report import in_use_by, kernel_paths
from netconfig.trip.smcroute import read_igmp_memberships

from .streams import Datagram

# Processes of the concentrator: `concentrator relay|netd`, `python -m concentrator relay`,
# `python -m netconfig.netd`; smcrouted is listed apart (it holds the kernel's routes).
_ROLES = (("relay", ("concentrator", "relay")), ("netd", ("netd",)))


@dataclass
class Proc:
    pid: int
    role: str
    cmdline: str
    sockets: list[dict[str, Any]] = field(default_factory=list)


def _netns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def concentrator_processes() -> list[Proc]:
    """Relay and netd processes in this network namespace (not this evidence process)."""
    mine, me = _netns("self"), os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or _netns(entry) != mine:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or "evidence" in argv or argv[0] in ("ip", "sudo"):
            continue
        text = " ".join(argv)
        if "netconfig.netd" in text or ("concentrator" in text and "netd" in argv):
            found.append(Proc(int(entry), "netd", text))
        elif "concentrator" in text and "relay" in argv:
            found.append(Proc(int(entry), "relay", text))
    for p in found:
        p.sockets = process_sockets(p.pid)
    return found


def _socket_table() -> dict[int, dict[str, Any]]:
    """inode -> socket, for the kinds that could receive a datagram."""
    table: dict[int, dict[str, Any]] = {}
    for kind in ("udp", "udp6", "raw", "raw6"):
        try:
            with open(f"/proc/net/{kind}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9:
                local = parts[1]
                addr, port = local.rsplit(":", 1)
                table[int(parts[9])] = {"kind": kind, "local": _hexaddr(addr), "port": int(port, 16)}
    try:
        with open("/proc/net/packet") as f:
            for line in f.read().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 9:
                    table[int(parts[8])] = {"kind": "packet", "local": f"ifindex {parts[4]}", "port": 0}
    except OSError:
        pass
    return table


def _hexaddr(word: str) -> str:
    if len(word) == 8:
        return str(ipaddress.IPv4Address(struct.pack("=I", int(word, 16))))
    return str(ipaddress.IPv6Address(b"".join(struct.pack("=I", int(word[i : i + 8], 16)) for i in range(0, 32, 8))))


def process_sockets(pid: int) -> list[dict[str, Any]]:
    table = _socket_table()
    out: list[dict[str, Any]] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sock = table.get(int(target[8:-1]))
            if sock is not None:
                out.append(sock)
    return out


def ip_maddr() -> str:
    try:
        return subprocess.run(["ip", "maddr", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(ip maddr show failed: {exc})"


def kernel_snapshot(mc: MulticastConfig, network: NetworkConfig | None) -> dict[str, dict[str, Any]]:
    """(source, group) -> the kernel's entry as JSON (netconfig.trip.verdict.PathStatus), as
    `concentrator trip-path` reads it, from the engine chosen on this kernel (none when
    the engine is refused here)."""
    resolved, _choice = resolve(mc)
    if resolved is None:
        return {}
    return {f"{st.source}>{st.group}": st.to_json() for st in kernel_paths(resolved, in_use_by(network))}


def engine_facts(mc: MulticastConfig) -> dict[str, Any]:
    """The engine on this kernel (or its refusal), the kernel's features, and that
    engine's own rules with their counters, as text an engineer can compare with the
    table of section 3: nftables' table, or the multicast routing table's VIFs and
    entries."""
    cap = probe()
    resolved, choice = resolve(mc, cap)
    if resolved is None:
        rules = "(no engine runs on this kernel)"
    elif resolved.engine == SMCROUTE:
        rules = "".join(_read(f"/proc/net/{name}") for name in ("ip_mr_vif", "ip_mr_cache"))
    else:
        rules = _command(["nft", "list", "table", "netdev", NFT_TABLE])
    return {"choice": choice.to_json(), "kernel": cap.to_json(), "summary": cap.describe(), "rules": rules}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return f"({path}: {exc})\n"


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({' '.join(argv)} failed: {exc})"
    return done.stdout if done.returncode == 0 else f"({' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()})"


def active_interfaces(netd_state: dict[str, Any] | None, network: Any) -> dict[str, str | None]:
    """Interface of each managed path -> the interface its link uses now (netd's state)."""
    if not netd_state or network is None:
        return {}
    out: dict[str, str | None] = {}
    for link in network.links:
        st = netd_state.get("links", {}).get(link.name)
        if st is None:
            continue
        active = link.primary.interface if st.get("active") == "primary" else link.backup.interface
        out[link.primary.interface] = out[link.backup.interface] = None if st.get("all_down") else active
    return out


def forwarded_datagrams(mc: MulticastConfig, datagrams: list[Datagram]) -> dict[str, Any]:
    """Trip datagrams seen coming in and going out: copies per outbound interface, payload
    identity, and the time the kernel took (out minus in, both captured here). Unicast
    UDP forwarded through this host is measured the same way, as the baseline."""
    groups = {str(g.group): g for g in mc.groups}
    inbound = {name for g in mc.groups for name in g.inbound}
    outbound = {name for g in mc.groups for name in g.outbound}
    ins: dict[tuple[str, int, str, int, bytes], list[Datagram]] = defaultdict(list)
    outs: dict[tuple[str, int, str, int, bytes], list[Datagram]] = defaultdict(list)
    for d in datagrams:
        key = (d.src, d.sport, d.dst, d.dport, d.payload)
        if d.outgoing and d.ifname in outbound:
            outs[key].append(d)
        elif not d.outgoing and d.ifname in inbound:
            ins[key].append(d)
    per_group: dict[str, dict[str, Any]] = {}
    # Per copy (what each site sees: the kernel clones one copy per outbound interface in
    # turn, so later copies leave later) and the first copy of each datagram.
    delays: dict[str, list[float]] = {"multicast": [], "multicast first copy": [], "unicast": []}
    for key, arrived in ins.items():
        first = arrived[0]
        copies = outs.get(key, [])
        if first.dst in groups:
            g = per_group.setdefault(first.dst, {"in": 0, "copies": defaultdict(int), "not_forwarded": 0})
            g["in"] += 1
            if not copies:
                g["not_forwarded"] += 1
            for c in copies:
                g["copies"][c.ifname] += 1
                delays["multicast"].append(c.t - first.t)
            if copies:
                delays["multicast first copy"].append(min(c.t for c in copies) - first.t)
        elif copies:
            delays["unicast"].extend(c.t - first.t for c in copies)
    for g in per_group.values():
        g["copies"] = dict(g["copies"])
    summary = {kind: _summary(v) for kind, v in delays.items()}
    added = None
    if delays["multicast"] and delays["unicast"]:
        added = (statistics.median(delays["multicast"]) - statistics.median(delays["unicast"])) * 1e6
    return {"groups": per_group, "delay": summary, "added_median_us": added}


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    values = sorted(values)
    return {
        "count": len(values),
        "p50_us": values[len(values) // 2] * 1e6,
        "p99_us": values[min(len(values) - 1, int(len(values) * 0.99))] * 1e6,
        "max_us": values[-1] * 1e6,
    }


def judge(
    mc: MulticastConfig,
    network: Any,
    netd_state: dict[str, Any] | None,
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    procs: list[Proc],
    forwarded: dict[str, Any],
    maddr: str,
) -> dict[str, Any]:
    """Section 3's facts and verdict; `maddr` is `ip maddr show` (kept whole beside the report)."""
    joined = read_igmp_memberships()
    active = active_interfaces(netd_state, network)
    wanted = {f"{r.source}>{r.group}": r for r in wanted_routes(mc, active)}
    engine = engine_facts(mc)
    findings: list[str] = []
    if engine["choice"]["engine"] is None:
        findings.append(f"no trip path engine on this kernel: {engine['choice']['reason']}")
    for key in wanted:
        if key not in after:
            findings.append(f"{key}: the kernel has no forwarding entry")
    rows = []
    for key, st in after.items():
        want = wanted[key]
        row = dict(st)
        row["wanted_inbound"], row["wanted_outbound"] = want.inbound, list(want.outbound)
        row["packets_during_capture"] = st["packets_forwarded"] - before.get(key, {}).get("packets_forwarded", 0)
        row["wrong_if_during_capture"] = st["wrong_interface"] - before.get(key, {}).get("wrong_interface", 0)
        # nftables: arrivals on the uplink path not in use, forwarded (part of the packets).
        row["standby_during_capture"] = st["standby_arrivals"] - before.get(key, {}).get("standby_arrivals", 0)
        row["members_on_this_host"] = joined.get(st["group"], [])
        rows.append(row)
        if not st["installed"]:
            findings.append(f"{key}: the kernel has no forwarding entry")
        elif active and (st["inbound"] != want.inbound or set(st["outbound"]) != set(want.outbound)):
            findings.append(
                f"{key}: the kernel forwards in on {st['inbound']} out on {','.join(st['outbound'])}, "
                f"the configuration and netd's active paths want {want.inbound} -> "
                f"{','.join(want.outbound)}"
            )
        elif not st["ok"]:
            findings.append(f"{key}: installed not as configured")
        if row["members_on_this_host"]:
            findings.append(
                f"group {st['group']}: a socket on this host is a member "
                f"(/proc/net/igmp, on {', '.join(row['members_on_this_host'])})"
            )
    trip_ports = {g.port for g in mc.groups}
    trip_groups = {str(g.group) for g in mc.groups}
    for p in procs:
        for s in p.sockets:
            if s["kind"].startswith("udp") and (s["port"] in trip_ports or s["local"] in trip_groups):
                findings.append(f"{p.role} pid {p.pid} has a UDP socket on {s['local']}:{s['port']} (a trip port)")
            if s["kind"] == "packet":
                findings.append(f"{p.role} pid {p.pid} has a packet socket ({s['local']}): it could read trips")
    for group, g in forwarded["groups"].items():
        if g["not_forwarded"]:
            findings.append(
                f"group {group}: {g['not_forwarded']} of {g['in']} captured trip datagrams did not "
                "leave on any outbound interface unchanged"
            )
    groups = {str(g.group) for g in mc.groups}
    trip_lines = [line.strip() for line in maddr.splitlines() if any(g in line.split() for g in groups)]
    for line in trip_lines:
        findings.append(f"ip maddr shows a trip group joined: {line}")
    return {
        "engine": engine,
        "paths": rows,
        "igmp": joined,
        "ip_maddr_trip_lines": trip_lines,
        "processes": [vars(p) for p in procs],
        "forwarded": forwarded,
        "findings": findings,
        "active_interfaces": active,
    }
