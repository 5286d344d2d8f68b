"""`concentrator trip-path --config FILE [--state FILE] [--json]`: does the kernel forward
the trip groups to the sites over the paths in use?

For operators and certifiers (annex A40 5.10: the concentrator does not interpose in
the BMI's multicast trip messages). It says first what this kernel offers and which
engine runs (netconfig.trip.capability; a refused engine is NOT OK), then judges what happens,
not what was meant, from that engine's own rules and counters:

- the paths in use come from the kernel's routes (`ip route get` of each link's first
  destination), not from the configuration's interface lists;
- per (source, group): the entry's inbound interface must be the uplink path in use,
  its outbound interfaces exactly each member site's path in use;
- counters are forwarded packets (the kernel's count minus wrong-interface arrivals);
  a trip dropped on another interface since the last check (the BMI sends on a path
  we do not listen on: the routing table takes an (S,G) in on one interface) is NOT
  OK. The nftables engine takes it in on both uplink paths: arrivals on the path not
  in use are forwarded, counted and reported, not a problem. The counts of each check
  are kept beside smcrouted's pid file (`--last`) for the next one;
- netd must be running (its state file's pid) and agree with the kernel on every
  link: without it nothing re-points the path when a link switches;
- no socket on this host may be a member of a trip group.

It reads the kernel, smcrouted's pid file and netd's state file only, so it answers
the same whether the relay runs or not.

Exit status: 0 OK; 1 NOT OK; 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from concentrator.configbase import ConfigError

from ..config import NetworkConfig
from ..routes import paths_in_use
from .capability import probe, resolve
from .config import SMCROUTE, MulticastConfig, load_multicast
from .nftables import read_rules_sync
from .render import NFT_TABLE
from .smcroute import read_igmp_memberships, read_kernel
from .tables import nft_entries
from .verdict import PathStatus, counters, parse_counters, path_status

DEFAULT_STATE = "/run/concentrator/netd.json"


def _alive(pid: object, comm: str | None = None) -> bool:
    if not isinstance(pid, int | str):  # read from netd's state file: anything may be there
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            stat = f.read()
    except (OSError, TypeError, ValueError):
        return False
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :][:1]
    return state != "Z" and (comm is None or name == comm)


def _daemon(mc: MulticastConfig) -> dict[str, Any]:
    if mc.engine != SMCROUTE:  # copies made by nftables: no daemon involved
        return {"engine": mc.engine, "pid": None, "running": True, "pid_file": None}
    try:
        with open(mc.smcroute.pid_file) as f:
            pid: int | None = int(f.read().strip())
    except (OSError, ValueError):
        pid = None
    running = _alive(pid, "smcrouted")
    return {"engine": mc.engine, "pid": pid if running else None, "running": running, "pid_file": mc.smcroute.pid_file}


def _netd(network: NetworkConfig | None, state_file: str, in_use: dict[str, str | None]) -> dict[str, Any]:
    """netd's own view from its state file: running, and on which path each link is."""
    try:
        with open(state_file) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    running = bool(state) and _alive(state.get("pid"))
    disagree = []
    for link in network.links if network is not None else ():
        active = state.get("links", {}).get(link.name, {}).get("active")
        iface = {"primary": link.primary.interface, "backup": link.backup.interface}.get(active)
        if running and iface != in_use.get(link.primary.interface):
            disagree.append(
                f"{link.name}: netd uses {iface}, the kernel routes over {in_use.get(link.primary.interface)}"
            )
    return {
        "running": running,
        "pid": state.get("pid") if running else None,
        "state_file": state_file,
        "disagrees": disagree,
    }


def _role(network: NetworkConfig | None, ifname: str | None) -> str:
    """'uplink primary' for an interface that is a managed path, else ''."""
    if network is None or ifname is None:
        return ""
    for link in network.links:
        for role, path in (("primary", link.primary), ("backup", link.backup)):
            if path.interface == ifname:
                return f"{link.name} {role}"
    return ""


def _read_last(path: str) -> dict[Any, Any] | None:
    try:
        with open(path) as f:
            return parse_counters(json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _write_last(path: str, doc: dict[str, Any]) -> None:
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as exc:  # the verdict stands; the next check counts from the entry's start
        print(f"trip-path: cannot keep the counts in {path}: {exc}", file=sys.stderr)


def kernel_paths(mc: MulticastConfig, in_use: dict[str, str | None], last: Any = None) -> list[PathStatus]:
    """Each trip (S,G) as the kernel forwards it with the engine chosen on this kernel
    (`mc` resolved by capability.resolve), judged against the paths in use (`in_use_by`);
    `last` as for path_status."""
    entries = read_kernel() if mc.engine == SMCROUTE else nft_entries(mc, read_rules_sync() or [])
    return path_status(mc, entries, in_use, last)


def forwarded_by_group() -> dict[str, int]:
    """Trips forwarded per group (summed over sources) by either engine, from the
    kernel's own counters, without the configuration: the multicast routing table's
    entries (arrivals on their inbound interface) and the nftables table's inbound
    rules on both uplink paths (each arrival is matched by the one rule of the uplink
    it came in on, "in" or "standby", and copied). Only one engine runs; reading both
    needs no knowledge of which."""
    counts: dict[str, int] = {}
    for e in read_kernel():
        counts[str(e.group)] = counts.get(str(e.group), 0) + e.packets - e.wrong_if
    try:
        rules = read_rules_sync() or []
    except OSError:  # no libnftables on this host: no table of ours either
        rules = []
    for r in rules:
        if r.comment.endswith((" in", " standby")):
            group = r.comment.split()[1]
            counts[group] = counts.get(group, 0) + r.packets
    return counts


def in_use_by(network: NetworkConfig | None) -> dict[str, str | None]:
    """The path each managed interface's link uses now, from the kernel's routes."""
    return paths_in_use(network.links) if network is not None else {}


def report(mc: MulticastConfig, network: NetworkConfig | None, state_file: str, last_file: str) -> dict[str, Any]:
    cap = probe()
    resolved, choice = resolve(mc, cap)
    engine = {**choice.to_json(), "kernel": cap.to_json(), "summary": cap.describe()}
    in_use = in_use_by(network)
    if resolved is None:  # nothing to read: no engine runs on this kernel
        netd = _netd(network, state_file, in_use)
        return {"ok": False, "engine": engine, "smcrouted": None, "netd": netd, "paths": []}
    mc = resolved
    status = kernel_paths(mc, in_use, _read_last(last_file))
    _write_last(last_file, counters(status))
    joined = read_igmp_memberships()
    ports = {g.group: g.port for g in mc.groups}
    groups = []
    for st in status:
        d = st.to_json()
        d["port"] = ports[st.group]
        d["inbound_role"] = _role(network, st.inbound)
        d["members_on_this_host"] = joined.get(str(st.group), [])
        groups.append(d)
    daemon, netd = _daemon(mc), _netd(network, state_file, in_use)
    ok = (
        all(st.ok for st in status)
        and not any(g["members_on_this_host"] for g in groups)
        and daemon["running"]
        and netd["running"]
        and not netd["disagrees"]
    )
    return {"ok": ok, "engine": engine, "smcrouted": daemon, "netd": netd, "paths": groups}


def plain(doc: dict[str, Any]) -> str:
    e = doc["engine"]
    lines = [e["summary"]]
    if e["engine"] is None:
        lines.append(f"engine: REFUSED (multicast.engine {e['asked']}): {e['reason']}")
    else:
        lines.append(f"engine: {e['engine']} (multicast.engine {e['asked']}): {e['reason']}")
    d = doc["smcrouted"]
    if d is None:
        pass
    elif d["engine"] != SMCROUTE:
        lines.append(f"copies made by nftables (table netdev {NFT_TABLE}), no daemon involved")
    else:
        lines.append(
            f"smcrouted: running, pid {d['pid']}"
            if d["running"]
            else f"smcrouted: NOT RUNNING (no live process in {d['pid_file']}): the kernel forwards no trip group"
        )
    n = doc["netd"]
    lines.append(
        f"netd: running, pid {n['pid']}"
        if n["running"]
        else f"netd: NOT RUNNING (no live process in {n['state_file']}): nothing re-points the trip "
        "path when a link switches"
    )
    lines += [f"  NETD AND THE KERNEL DISAGREE: {why}" for why in n["disagrees"]]
    for p in doc["paths"]:
        head = f"group {p['group']} (UDP {p['port']}) from {p['source']}: "
        if not p["installed"]:
            lines.append(head + "NOT INSTALLED: the kernel has no forwarding entry, trip messages are not forwarded")
        else:
            role = f" ({p['inbound_role']})" if p["inbound_role"] else ""
            verdict = "forwarded by the kernel" if p["ok"] else "NOT FORWARDED AS NEEDED"
            lines.append(
                f"{head}{verdict}, in on {p['inbound']}{role}, out on {', '.join(p['outbound'])}; "
                f"{p['packets_forwarded']} packets forwarded, {p['wrong_interface']} arrived on another interface "
                f"({p['wrong_interface_since_last_check']} since the last check)"
            )
            lines += [f"  {why}" for why in p["problems"]]
            lines += [f"  {note}" for note in p["notes"]]
        members = p["members_on_this_host"]
        lines.append(
            "  no socket on this host is a member of the group"
            if not members
            else f"  MEMBER OF THE GROUP on {', '.join(members)}: a process here joined a trip group"
        )
    lines.append("trip path: OK" if doc["ok"] else "trip path: NOT OK")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="concentrator trip-path", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the appliance's YAML file (multicast: section)")
    ap.add_argument("--state", default=DEFAULT_STATE, help=f"netd's state file (default {DEFAULT_STATE})")
    ap.add_argument(
        "--last",
        help="where the counts of the last check are kept (default: trip-path.last.json beside smcrouted's pid file)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of plain words")
    args = ap.parse_args(argv)
    try:
        mc, network = load_multicast(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if mc is None:
        print(f"{args.config}: no multicast: section (no trip groups configured)", file=sys.stderr)
        return 2
    last = args.last or os.path.join(os.path.dirname(mc.smcroute.pid_file), "trip-path.last.json")
    doc = report(mc, network, args.state, last)
    print(json.dumps(doc, indent=2) if args.json else plain(doc))
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
