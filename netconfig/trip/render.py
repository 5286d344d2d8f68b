"""The trip path's configuration as each engine takes it: smcrouted's file and the
nftables table with its rules (text only; netd loads it, tables.py reads it back).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from .config import MulticastConfig
from .plan import MRoute


def smcroute_conf(cfg: MulticastConfig, routes: list[MRoute]) -> str:
    """smcrouted's configuration: only our interfaces become VIFs (it runs with -N),
    no mgroup (joining is never needed for static forwarding, and is forbidden), no
    mrdisc; and the routes, so that a restarted smcrouted installs them by itself."""
    lines = ["# written by concentrator netd: do not edit (rewritten on every switch)"]
    lines += [f"phyint {name} enable" for name in cfg.interfaces]
    lines += [f"mroute from {r.inbound} source {r.source} group {r.group} to {' '.join(r.outbound)}" for r in routes]
    return "\n".join(lines) + "\n"


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


def nft_inbound_rule(route: MRoute, ifname: str, chain: str) -> str:
    """The (S,G)'s rule on an uplink's ingress. The path in use ("in") and the group's
    other uplink paths ("standby") both jump to the copies: the BMI's side sends on the
    path its router considers active, and for a while after a switch, or with our netd
    restarted or dead, that is not ours. Each keeps its own counter and comment, so that
    arrivals on the path not in use stay visible. Only an uplink that is not an inbound
    interface of the group at all counts the trip as a wrong-interface arrival and drops
    it."""
    match = f"ip saddr {route.source} ip daddr {route.group}"
    if ifname == route.inbound:
        return f'{match} counter jump {chain} comment "{route.source} {route.group} in"'
    if ifname in route.standby:
        return f'{match} counter jump {chain} comment "{route.source} {route.group} standby"'
    return f'{match} counter drop comment "{route.source} {route.group} wrong"'


def nft_copy_rule(ifname: str) -> str:
    return f'counter dup to "{ifname}" comment "out"'


def nft_ruleset(cfg: MulticastConfig, routes: list[MRoute]) -> str:
    """The whole table, loaded in one transaction (replacing any earlier one).

    A netdev ingress chain on each uplink interface, whose (S,G) rule jumps to the
    copies on every uplink path of the group (nft_inbound_rule); per (S,G) a chain with
    one `dup` per site path in use, then `drop` (the concentrator itself never takes a
    trip).
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
            lines.append("    " + nft_inbound_rule(r, ifname, nft_chain(cfg, r.source, r.group)))
        lines.append("  }")
    for r in routes:
        lines.append(f"  chain {nft_chain(cfg, r.source, r.group)} {{")
        lines += ["    " + nft_copy_rule(name) for name in r.outbound]
        lines += ['    counter drop comment "end"', "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
