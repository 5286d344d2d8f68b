"""`concentrator trip-path --config FILE [--json]`: what the kernel does with the trip groups.

For operators and certifiers (annex A40 5.10: the concentrator does not interpose in
the BMI's multicast trip messages). Reads only the kernel (/proc/net/ip_mr_cache,
ip_mr_vif, igmp in the current network namespace) and smcrouted's pid file, so it
answers the same whether the relay or netd run or not. Per (source, group): whether
the forwarding entry is installed, on which inbound interface, where it goes out,
packets forwarded and wrong-interface counts; and whether any socket on this host is
a member of a trip group (none may be).

Exit status: 0 all paths installed as configured and no member; 1 otherwise; 2 bad
configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from concentrator.configbase import ConfigError

from .config import NetworkConfig
from .multicast import MulticastConfig, PathStatus, load_multicast, path_status
from .trippath import read_igmp_memberships, read_kernel


def _daemon(mc: MulticastConfig) -> dict[str, Any]:
    try:
        with open(mc.smcroute.pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            running = f.read().strip() == "smcrouted"
    except (OSError, ValueError):
        pid, running = None, False
    return {"pid": pid if running else None, "running": running, "pid_file": mc.smcroute.pid_file}


def _role(network: NetworkConfig | None, ifname: str | None) -> str:
    """'uplink primary' for an interface that is a managed path, else ''."""
    if network is None or ifname is None:
        return ""
    for link in network.links:
        for role, path in (("primary", link.primary), ("backup", link.backup)):
            if path.interface == ifname:
                return f"{link.name} {role}"
    return ""


def report(mc: MulticastConfig, network: NetworkConfig | None) -> dict[str, Any]:
    status = path_status(mc, read_kernel())
    joined = read_igmp_memberships()
    ports = {g.group: g.port for g in mc.groups}
    groups = []
    for st in status:
        d = st.to_json()
        d["port"] = ports[st.group]
        d["inbound_role"] = _role(network, st.inbound)
        d["members_on_this_host"] = joined.get(str(st.group), [])
        groups.append(d)
    ok = all(st.ok for st in status) and not any(g["members_on_this_host"] for g in groups)
    return {"ok": ok, "smcrouted": _daemon(mc), "paths": groups}


def plain(doc: dict[str, Any], status: list[PathStatus] | None = None) -> str:
    lines = []
    d = doc["smcrouted"]
    lines.append(f"smcrouted: running, pid {d['pid']}" if d["running"]
                 else f"smcrouted: NOT RUNNING (no live process in {d['pid_file']}): the kernel forwards no trip group")
    for p in doc["paths"]:
        head = f"group {p['group']} (UDP {p['port']}) from {p['source']}: "
        if not p["installed"]:
            lines.append(head + "NOT INSTALLED: the kernel has no forwarding entry, trip messages are not forwarded")
        else:
            role = f" ({p['inbound_role']})" if p["inbound_role"] else ""
            verdict = "forwarded by the kernel" if p["ok"] else "INSTALLED NOT AS CONFIGURED"
            lines.append(
                f"{head}{verdict}, in on {p['inbound']}{role}, out on {', '.join(p['outbound'])}; "
                f"{p['packets_forwarded']} packets forwarded, {p['wrong_interface']} arrived on another interface"
            )
        members = p["members_on_this_host"]
        lines.append("  no socket on this host is a member of the group" if not members
                     else f"  MEMBER OF THE GROUP on {', '.join(members)}: a process here joined a trip group")
    lines.append("trip path: OK" if doc["ok"] else "trip path: NOT OK")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="concentrator trip-path", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the appliance's YAML file (multicast: section)")
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
    doc = report(mc, network)
    print(json.dumps(doc, indent=2) if args.json else plain(doc))
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
