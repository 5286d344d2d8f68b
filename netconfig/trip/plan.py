"""The kernel entries the trip path wants for the links' active paths: pure.

The kernel keeps one forwarding entry per (source, group) with a single inbound
interface, so each entry takes the uplink's path in use and each member site's path
in use; both engines install what this plans (render.py writes it for each). The
nftables engine also takes the (S,G) in on the group's other uplink paths (`standby`):
the BMI's side sends on the path its router considers active, which is not always ours
(docs/trip-path.md, "Both uplink paths taken in").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from .config import MulticastConfig


@dataclass(frozen=True, slots=True, order=True)
class MRoute:
    """One kernel forwarding entry: (source, group), one inbound interface; and the
    group's other inbound interfaces, which only the nftables engine can use (the
    routing table has one inbound interface per entry and ignores them)."""

    source: IPv4Address
    group: IPv4Address
    inbound: str
    outbound: tuple[str, ...]
    standby: tuple[str, ...] = ()


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
            routes.append(MRoute(s, g.group, iif, outs, tuple(n for n in g.inbound if n != iif)))
    return sorted(routes)
