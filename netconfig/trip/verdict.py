"""The trip path judged: the kernel's entries (tables.py) against the entries wanted
for the paths in use (plan.py), per (source, group), with the wrong-interface arrivals
since the last check. Pure: netd's metrics, `concentrator trip-path` and the evidence
dossier read the kernel and call this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from .config import MulticastConfig
from .plan import wanted_routes
from .tables import KernelEntry


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
