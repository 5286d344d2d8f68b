"""Byte identity and selectivity, judged from what was captured (no I/O).

Input: the ASDUs of every TCP connection, each labelled by `classify` with its hop and
direction from the configuration (uplink listen address, sites' endpoints):

    up       concentrator -> BMI        bmi      BMI -> concentrator
    site     UPDC -> concentrator        down     concentrator -> UPDC

Rules (annex A40 5.10; README "What the relay guarantees"):
1. every `up` ASDU equals, byte for byte, an ASDU a site sent, taken in that site's
   order (the same site ASDU twice only on two different uplink connections: the Ed. 2
   re-send after the active role moved);
2. every `bmi` ASDU with CA c reached the site owning c once, nothing else; CA 65535
   reached every site once; no site received an ASDU the BMI did not address to it;
3. an `up` ASDU that no site sent is allowed only as the cause-46 negative answer to a
   `bmi` ASDU whose CA no site owns: the only ASDU the concentrator originates.
Capture edges are not judged as faults: ASDUs forwarded in the first `grace` seconds
that a site sent before the capture began, and ASDUs still in flight in the last
`grace` seconds, are counted apart.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from concentrator.iec104.asdu import BROADCAST_CA, Cause, negative_mirror

from .appliance import Appliance
from .streams import Apdu, Flow


@dataclass(frozen=True, slots=True)
class Hop:
    kind: str  # up, bmi, site, down
    site: str | None  # for site and down


class Classifier:
    """Which hop a TCP direction is, from the configuration alone."""

    def __init__(self, config: Appliance) -> None:
        self.listen = config.uplink.listen
        self.endpoints: dict[tuple[str, int], str] = {}
        for site in config.sites:
            for ep in site.endpoints:
                for address in _addresses(ep.host):
                    self.endpoints[(address, ep.port)] = site.name

    def __call__(self, flow: Flow) -> Hop | None:
        src, sport, dst, dport = flow
        site = self.endpoints.get((dst, dport))
        if site is not None:
            return Hop("down", site)
        site = self.endpoints.get((src, sport))
        if site is not None:
            return Hop("site", site)
        if dport == self.listen.port and self._listens_on(dst):
            return Hop("bmi", None)
        if sport == self.listen.port and self._listens_on(src):
            return Hop("up", None)
        return None

    def _listens_on(self, address: str) -> bool:
        host = self.listen.host
        return host in ("0.0.0.0", "::") or _norm(host) == _norm(address)


def _norm(address: str) -> str:
    return address.removeprefix("::ffff:")


def _addresses(host: str) -> list[str]:
    """A site endpoint's addresses (a host name is resolved once, read-only)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return [host]


@dataclass
class Mismatch:
    rule: str
    what: str
    t: float
    hop: str
    asdu: str  # hex of the ASDU in question
    expected: str | None = None  # hex of the ASDU it should have been, when one is known
    differs_at: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class SiteCounts:
    from_site: int = 0
    forwarded: int = 0  # matched on the uplink
    repeated_ed2: int = 0  # the same site ASDU again on another uplink connection
    not_on_uplink: int = 0  # sent by the site, not seen on the uplink (yet)
    in_flight_at_end: int = 0
    commands_for_site: int = 0  # BMI ASDUs addressed to this site (own CA or 65535)
    commands_delivered: int = 0
    commands_site_unconnected: int = 0  # for it while no connection to it was seen at all
    to_site: int = 0  # ASDUs the site received from the concentrator


@dataclass
class MatchResult:
    sites: dict[str, SiteCounts]
    up: int = 0
    bmi: int = 0
    bmi_broadcast: int = 0
    bmi_unknown_ca: int = 0
    negative_answers: int = 0  # cause-46 answers the concentrator originated
    before_capture: int = 0  # uplink/site ASDUs whose origin preceded the capture
    in_flight: int = 0  # BMI ASDUs of the last seconds not delivered yet
    exceptions: list[Mismatch] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k not in ("sites", "exceptions")}
        d["sites"] = {name: vars(c) for name, c in self.sites.items()}
        d["exceptions"] = [e.to_json() for e in self.exceptions]
        return d


def _diff(a: bytes, b: bytes) -> list[int]:
    return [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]


def match(
    config: Appliance, apdus: list[Apdu], hops: dict[Flow, Hop], started: float, ended: float, grace: float = 2.0
) -> MatchResult:
    result = MatchResult({s.name: SiteCounts() for s in config.sites})
    # A site with no TCP segment in the whole capture was not connected: the relay holds
    # its commands for at most t1 and drops them (counted), that is not a routing fault.
    connected = {hop.site for hop in hops.values() if hop.site is not None}
    owner = {ca: s.name for s in config.sites for ca in s.common_addresses}
    by_kind: dict[str, list[Apdu]] = defaultdict(list)
    site_lists: dict[str, list[Apdu]] = defaultdict(list)
    down_lists: dict[str, list[Apdu]] = defaultdict(list)
    for a in apdus:
        hop = hops.get(a.flow)
        if hop is None:
            continue
        by_kind[hop.kind].append(a)
        if hop.kind == "site":
            site_lists[hop.site].append(a)  # type: ignore[index]
        elif hop.kind == "down":
            down_lists[hop.site].append(a)  # type: ignore[index]

    def exc(rule: str, what: str, a: Apdu, hop: str, expected: bytes | None = None) -> None:
        result.exceptions.append(
            Mismatch(
                rule,
                what,
                a.t,
                hop,
                a.asdu.hex(" "),
                expected.hex(" ") if expected is not None else None,
                _diff(a.asdu, expected) if expected is not None else [],
            )
        )

    # ---------------------------------------------------------------- BMI -> sites
    answers_due: dict[bytes, int] = defaultdict(int)  # cause-46 answers the concentrator may send
    down_index: dict[str, dict[bytes, list[int]]] = {}
    for name, lst in down_lists.items():
        idx: dict[bytes, list[int]] = defaultdict(list)
        for i, a in enumerate(lst):
            idx[a.asdu].append(i)
        down_index[name] = idx
    used: dict[str, set[int]] = defaultdict(set)
    for name, lst in down_lists.items():
        result.sites[name].to_site = len(lst)
    for b in by_kind["bmi"]:
        result.bmi += 1
        ca = b.asdu[4] | b.asdu[5] << 8 if len(b.asdu) >= 6 else -1
        if ca == BROADCAST_CA:
            result.bmi_broadcast += 1
            targets = [s.name for s in config.sites]
        elif ca in owner:
            targets = [owner[ca]]
        else:
            result.bmi_unknown_ca += 1
            answers_due[negative_mirror(b.asdu)] += 1 if len(b.asdu) >= 6 else 0
            continue
        for name in targets:
            counts = result.sites[name]
            counts.commands_for_site += 1
            lst = down_lists.get(name, [])
            cand = [
                i for i in down_index.get(name, {}).get(b.asdu, []) if i not in used[name] and lst[i].t >= b.t - 0.001
            ]
            if cand:
                used[name].add(cand[0])
                counts.commands_delivered += 1
            elif b.t > ended - grace:
                result.in_flight += 1
            elif name not in connected:
                counts.commands_site_unconnected += 1
            else:
                exc("selectivity", f"BMI ASDU for CA {ca} never reached {name}", b, "bmi")
    for name, lst in down_lists.items():
        for i, a in enumerate(lst):
            if i in used[name]:
                continue
            if a.t < started + grace:
                result.before_capture += 1
                continue
            ca = a.asdu[4] | a.asdu[5] << 8 if len(a.asdu) >= 6 else -1
            where = "its CA is owned by " + owner[ca] if ca in owner else "no site owns its CA"
            exc(
                "selectivity",
                f"{name} received an ASDU (CA {ca}) the BMI did not address to it ({where})",
                a,
                f"down {name}",
            )

    # ---------------------------------------------------------------- sites -> BMI
    site_index: dict[bytes, list[tuple[str, int]]] = defaultdict(list)
    for name, lst in site_lists.items():
        result.sites[name].from_site = len(lst)
        for i, a in enumerate(lst):
            site_index[a.asdu].append((name, i))
    pointer: dict[str, int] = defaultdict(int)  # next site ASDU expected on the uplink, per site
    matched_on: dict[tuple[str, int], int] = {}  # site ASDU -> uplink connection that carried it
    for u in by_kind["up"]:
        result.up += 1
        ca = u.asdu[4] | u.asdu[5] << 8 if len(u.asdu) >= 6 else -1
        places = site_index.get(u.asdu, [])
        # The site owning the CA first (a UPDC sends its own CA).
        places = sorted(places, key=lambda p: (p[0] != owner.get(ca), p[1]))
        done = False
        for name, i in places:
            if i >= pointer[name] and site_lists[name][i].t <= u.t + 0.001:
                result.sites[name].not_on_uplink += sum(
                    1 for k in range(pointer[name], i) if (name, k) not in matched_on
                )
                pointer[name] = i + 1
                matched_on[(name, i)] = u.conn
                result.sites[name].forwarded += 1
                done = True
                break
        if not done:
            for name, i in places:
                if (name, i) in matched_on and matched_on[(name, i)] != u.conn:
                    result.sites[name].repeated_ed2 += 1
                    done = True
                    break
        if done:
            continue
        if places:
            name, i = places[0]
            what = (
                f"the same ASDU from {name} was already forwarded on this connection (a duplicate)"
                if (name, i) in matched_on
                else f"forwarded out of {name}'s order"
            )
            exc("identity", what, u, "up", site_lists[name][i].asdu)
            continue
        if answers_due.get(u.asdu, 0) > 0 and u.asdu[2] & 0x3F == Cause.UNKNOWN_COMMON_ADDRESS:
            answers_due[u.asdu] -= 1
            result.negative_answers += 1
            continue
        site = owner.get(ca)
        if u.t < started + grace and (site is None or pointer[site] == 0):
            result.before_capture += 1
            continue
        expected = None
        if site is not None and pointer[site] < len(site_lists[site]):
            expected = site_lists[site][pointer[site]].asdu
        origin = f"no site sent it (next expected from {site})" if site else f"no site sent it, CA {ca} is unknown"
        exc("identity", f"uplink ASDU not equal to any site ASDU: {origin}", u, "up", expected)
    for name, lst in site_lists.items():
        for k in range(pointer[name], len(lst)):
            if lst[k].t > ended - grace:
                result.sites[name].in_flight_at_end += 1
            else:
                result.sites[name].not_on_uplink += 1
    result.exceptions.sort(key=lambda e: e.t)
    return result
