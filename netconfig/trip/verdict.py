"""The trip path judged: the kernel's entries (tables.py) against the entries wanted
for the paths in use (plan.py), per (source, group), with the wrong-interface and
standby arrivals since the last check. Pure: netd's metrics, `concentrator trip-path`
and the evidence dossier read the kernel and call this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from .config import NFTABLES, MulticastConfig
from .plan import wanted_routes
from .tables import KernelEntry


@dataclass(frozen=True, slots=True)
class PathStatus:
    """What the kernel does with one (S,G) of the configuration, judged against the
    paths in use: trips must be taken in on the uplink path in use (and, with the
    nftables engine, on the group's other uplink paths too), sent out on exactly each
    member site's path in use, and no trip may have been dropped on another interface
    since the last check (the BMI sends where we do not listen)."""

    group: IPv4Address
    source: IPv4Address
    installed: bool
    inbound: str | None
    outbound: tuple[str, ...]
    forwarded: int  # packets the entry forwarded (arrivals on its inbound and standby interfaces)
    wrong_if: int  # arrivals on another interface, dropped, since the entry exists
    wrong_if_new: int  # of those, since the last check
    expected_inbound: str
    expected_outbound: tuple[str, ...]
    # nftables only: the uplink paths not in use that take the (S,G) in too (standby
    # rules), the arrivals there (forwarded, part of `forwarded`), and those since the
    # last check. Empty and 0 with the routing table, which cannot.
    standby: tuple[str, ...] = ()
    standby_packets: int = 0
    standby_new: int = 0
    expected_standby: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.installed:
            return ["no forwarding entry in the kernel: trips are not forwarded"]
        taken = {self.inbound, *self.standby}
        if self.expected_inbound not in taken:
            out.append(
                f"in on {self.inbound}, but the uplink path in use is {self.expected_inbound}: "
                f"trips arriving on {self.expected_inbound} are dropped"
            )
        for name in self.expected_standby:
            if name not in taken:
                out.append(
                    f"not taken in on {name} (the uplink path not in use): trips the BMI's side sends there "
                    "are not forwarded"
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
    def notes(self) -> list[str]:
        """What is worth a line but forwards every trip: arrivals on the uplink path not
        in use (the BMI's side sent on the other path: the two ends disagreed for a
        while), and an entry not re-pointed yet whose standby rule takes the path in use."""
        out = []
        if self.installed and self.inbound != self.expected_inbound and self.expected_inbound in self.standby:
            out.append(
                f"in on {self.inbound}, but the uplink path in use is {self.expected_inbound}: trips arriving "
                f"on {self.expected_inbound} are forwarded by its standby rule"
            )
        if self.standby_packets and self.expected_inbound in self.standby:
            # (The entry's standby path is the one in use now: say which rule, not "not in use".)
            out.append(
                f"{self.standby_packets} trips arrived on {', '.join(self.standby)} and were forwarded by its "
                f"standby rule ({self.standby_new} since the last check)"
            )
        elif self.standby_packets:
            out.append(
                f"{self.standby_packets} trips arrived on {', '.join(self.standby)}, the uplink path not in use, "
                f"and were forwarded ({self.standby_new} since the last check): the BMI's side sent them on "
                "the other path"
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
            "notes": self.notes,
            "inbound": self.inbound,
            "outbound": list(self.outbound),
            "standby": list(self.standby),
            "expected_inbound": self.expected_inbound,
            "expected_outbound": list(self.expected_outbound),
            "expected_standby": list(self.expected_standby),
            "packets_forwarded": self.forwarded,
            "wrong_interface": self.wrong_if,
            "wrong_interface_since_last_check": self.wrong_if_new,
            "standby_arrivals": self.standby_packets,
            "standby_arrivals_since_last_check": self.standby_new,
        }


Counters = Mapping[tuple[IPv4Address, IPv4Address], tuple[str | None, int, int]]


def _since(count: int, before: int | None) -> int:
    """Of `count`, what came since the last check (`before`: its count then, None when
    there was no check of this entry); a lower count than before is a new entry."""
    return count if before is None or before > count else count - before


def path_status(
    cfg: MulticastConfig,
    entries: list[KernelEntry],
    active_path: Mapping[str, str | None],
    last: Counters | None = None,
) -> list[PathStatus]:
    """Judge the kernel's entries against the routes wanted for the paths in use
    (`active_path`, as for wanted_routes). `last` holds, per (S,G), the inbound
    interface, wrong-interface and standby counts seen at the last check (None: no
    earlier check, every arrival counts as new)."""
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
            on_standby = e.standby_packets if e else 0
            inbound = e.inbound if e else None
            before = (last or {}).get((s, g.group))
            # The kernel counts from zero for each new entry (a re-point makes one;
            # nftables replaces the rules): another inbound interface is a new entry.
            if before is None or before[0] != inbound:
                wrong_before, standby_before = None, None
            else:
                wrong_before, standby_before = before[1], before[2]
            out.append(
                PathStatus(
                    g.group,
                    s,
                    installed,
                    inbound,
                    e.outbound if e else (),
                    # The kernel's packet count includes wrong-interface arrivals.
                    (e.packets - e.wrong_if) if e else 0,
                    wrong,
                    _since(wrong, wrong_before),
                    want.inbound,
                    want.outbound,
                    e.standby if e else (),
                    on_standby,
                    _since(on_standby, standby_before),
                    # Only the nftables engine can take an (S,G) in on several interfaces.
                    want.standby if cfg.engine == NFTABLES else (),
                )
            )
    return out


def counters(status: list[PathStatus]) -> dict[str, Any]:
    """What the next check compares against (JSON: "source group" -> [inbound, wrong, standby])."""
    return {f"{st.source} {st.group}": [st.inbound, st.wrong_if, st.standby_packets] for st in status}


def parse_counters(doc: Mapping[str, Any]) -> dict[tuple[IPv4Address, IPv4Address], tuple[str | None, int, int]]:
    out = {}
    for key, (inbound, wrong, standby) in doc.items():
        source, group = key.split()
        out[(IPv4Address(source), IPv4Address(group))] = (inbound, int(wrong), int(standby))
    return out
