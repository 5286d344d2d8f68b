"""The nftables engine of the trip path (past 32 multicast interfaces): the table's
text, the rules read back from `nft -j`, and the changes of one switch (no root)."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Address
from typing import Any

from netconfig.config import parse_network
from netconfig.trip.config import AUTO, NFTABLES, SMCROUTE, parse_multicast
from netconfig.trip.nftables import _changes
from netconfig.trip.plan import wanted_routes
from netconfig.trip.render import nft_ruleset
from netconfig.trip.smcroute import TripState, record
from netconfig.trip.tables import nft_entries, nft_error, parse_nft
from netconfig.trip.verdict import counters, parse_counters, path_status

FILE = "conc.yaml"


def network(n: int) -> dict[str, Any]:
    return {
        "service_address": "10.0.0.1",
        "uplink": {
            "destinations": ["10.0.1.0/24"],
            "primary": {"interface": "up0", "gateway": "172.16.0.2"},
            "backup": {"interface": "up1", "gateway": "172.16.1.2"},
        },
        "sites": [
            {
                "name": f"site{i}",
                "destinations": [f"10.1.{i}.1/32"],
                "primary": {"interface": f"s{i}p", "gateway": f"172.20.{i}.2"},
                "backup": {"interface": f"s{i}b", "gateway": f"172.21.{i}.2"},
            }
            for i in range(1, n + 1)
        ],
    }


def section(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "groups": [
            {
                "group": "239.192.10.1",
                "port": 2404,
                "sources": ["10.0.1.1"],
                "inbound": ["up0"],
                "outbound": [f"s{i}p" for i in range(1, n + 1)],
            }
        ],
        **extra,
    }


def active(n: int, **moved: str) -> dict[str, str]:
    out = {"up0": "up0", "up1": "up0"}
    for i in range(1, n + 1):
        out[f"s{i}p"] = out[f"s{i}b"] = f"s{i}p"
    for name, used in moved.items():
        out[name] = used
    return out


def test_the_engine_is_kept_as_written_the_kernel_decides_auto() -> None:
    """The section says what was asked; netconfig.trip.capability chooses on the kernel."""
    assert parse_multicast(section(15), FILE, parse_network(network(15), FILE)).engine == AUTO
    mc = parse_multicast(section(100), FILE, parse_network(network(100), FILE))
    assert mc.engine == AUTO and len(mc.interfaces) == 202
    assert parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE)).engine == NFTABLES
    assert parse_multicast(section(2, engine="smcroute"), FILE, parse_network(network(2), FILE)).engine == SMCROUTE


def test_the_table_copies_once_per_site_path_in_use_and_takes_the_group_in_on_both_uplink_paths() -> None:
    """Soak finding 3: the BMI's side sends on the path its router considers active; when
    the two ends disagree, a trip on our uplink path not in use was dropped. Both paths'
    rules now jump to the copies, each with its own counter and comment."""
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    text = nft_ruleset(mc, wanted_routes(mc, active(2)))
    assert text.startswith("table netdev concentrator_trip {}\ndelete table netdev concentrator_trip\n")
    assert (
        '  chain in_up0 {\n    type filter hook ingress device "up0" priority 0; policy accept;\n'
        '    ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter jump sg0 comment "10.0.1.1 239.192.10.1 in"\n  }\n'
    ) in text
    assert (
        '  chain in_up1 {\n    type filter hook ingress device "up1" priority 0; policy accept;\n'
        '    ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter jump sg0 comment "10.0.1.1 239.192.10.1 standby"\n'
        "  }\n"
    ) in text
    assert " wrong" not in text and text.count("counter drop") == 1  # the copies' chain's end only
    assert (
        '  chain sg0 {\n    counter dup to "s1p" comment "out"\n    counter dup to "s2p" comment "out"\n'
        '    counter drop comment "end"\n  }\n'
    ) in text
    # The uplink on its backup: the roles change places.
    text = nft_ruleset(mc, wanted_routes(mc, active(2, up0="up1", up1="up1")))
    match = "ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter jump sg0"
    assert f'device "up0" priority 0; policy accept;\n    {match} comment "10.0.1.1 239.192.10.1 standby"' in text
    assert f'device "up1" priority 0; policy accept;\n    {match} comment "10.0.1.1 239.192.10.1 in"' in text


def test_an_uplink_that_is_no_inbound_interface_of_the_group_still_drops_it() -> None:
    """Without a `network:` section groups may name different inbound interfaces: a
    group's trip arriving on another group's uplink is a wrong-interface arrival."""
    raw = section(1, engine="nftables")
    raw["groups"][0]["inbound"] = ["up0", "up1"]
    raw["groups"].append({**raw["groups"][0], "group": "239.192.10.2", "inbound": ["up2"]})
    mc = parse_multicast(raw, FILE, None)
    text = nft_ruleset(mc, wanted_routes(mc, {}))
    assert 'ip saddr 10.0.1.1 ip daddr 239.192.10.2 counter drop comment "10.0.1.1 239.192.10.2 wrong"' in text
    assert 'ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter drop comment "10.0.1.1 239.192.10.1 wrong"' in text
    assert 'counter jump sg0 comment "10.0.1.1 239.192.10.1 standby"' in text  # on up1
    assert text.count(" standby") == 1


def rule(chain: str, handle: int, comment: str, packets: int, expr: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule": {
            "family": "netdev",
            "table": "concentrator_trip",
            "chain": chain,
            "handle": handle,
            "comment": comment,
            "expr": [{"counter": {"packets": packets, "bytes": 0}}, expr],
        }
    }


# As `nft -j list table netdev concentrator_trip` prints it (nftables 1.0.6).
LISTED = {
    "nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "netdev", "name": "concentrator_trip", "handle": 1}},
        rule("in_up0", 5, "10.0.1.1 239.192.10.1 in", 40, {"jump": {"target": "sg0"}}),
        rule("in_up1", 6, "10.0.1.1 239.192.10.1 standby", 3, {"jump": {"target": "sg0"}}),
        rule("sg0", 7, "out", 43, {"dup": {"addr": "s1p"}}),
        rule("sg0", 8, "out", 43, {"dup": {"addr": "s2p"}}),
        rule("sg0", 9, "end", 43, {"drop": None}),
    ]
}
SG = (IPv4Address("10.0.1.1"), IPv4Address("239.192.10.1"))


def test_rules_read_back_are_judged_like_the_routing_table() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    [entry] = nft_entries(mc, parse_nft(LISTED))
    assert (entry.inbound, entry.standby, entry.outbound) == ("up0", ("up1",), ("s1p", "s2p"))
    assert (entry.packets, entry.wrong_if, entry.standby_packets) == (43, 0, 3)
    [st] = path_status(mc, [entry], active(2), {SG: ("up0", 0, 3)})
    assert st.ok and st.forwarded == 43 and st.standby_new == 0
    [st] = path_status(mc, [entry], active(2, s2p="s2b", s2b="s2b"), None)
    assert not st.ok and "not sent on s2b (path in use of a member site)" in st.problems


def test_arrivals_on_the_uplink_path_not_in_use_are_forwarded_and_reported_not_a_problem() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    [entry] = nft_entries(mc, parse_nft(LISTED))
    note = (
        "3 trips arrived on up1, the uplink path not in use, and were forwarded (3 since the last check): "
        "the BMI's side sent them on the other path"
    )
    [st] = path_status(mc, [entry], active(2), None)
    assert st.ok and st.problems == [] and st.notes == [note]
    assert (st.forwarded, st.standby_packets, st.standby_new, st.wrong_if_new) == (43, 3, 3, 0)
    doc = st.to_json()
    assert (doc["packets_forwarded"], doc["standby_arrivals"], doc["standby_arrivals_since_last_check"]) == (43, 3, 3)
    assert (doc["standby"], doc["expected_standby"], doc["notes"]) == (["up1"], ["up1"], [note])
    # The next check: nothing new since; the total stays in the note.
    [again] = path_status(mc, [entry], active(2), parse_counters(json.loads(json.dumps(counters([st])))))
    assert again.ok and again.standby_new == 0 and "(0 since the last check)" in again.notes[0]
    # netd dead, the uplink routed over up1: the entry was not re-pointed, but the standby
    # rule of up1 forwards what arrives there. Said, not a problem (netd's absence is).
    [stale] = path_status(mc, [entry], active(2, up0="up1", up1="up1"), None)
    assert stale.ok and stale.expected_inbound == "up1" and stale.expected_standby == ("up0",)
    assert stale.notes == [
        "in on up0, but the uplink path in use is up1: trips arriving on up1 are forwarded by its standby rule",
        "3 trips arrived on up1 and were forwarded by its standby rule (3 since the last check)",
    ]
    # ... but netd, which keeps the table as wanted, re-points it.
    assert record(TripState(), [stale], lambda: None) == [stale]
    assert record(TripState(), [st], lambda: None) == []


def test_an_uplink_path_not_taken_in_is_not_ok_with_nftables_and_expected_with_the_routing_table() -> None:
    """The table an earlier version loaded (a drop on the other uplink), or a standby rule
    deleted: trips the BMI's side sends on that path are lost, NOT OK; netd loads the
    table again. The routing table cannot take a group in twice: not expected there."""
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    old = copy.deepcopy(LISTED)
    old["nftables"][3] = rule("in_up1", 6, "10.0.1.1 239.192.10.1 wrong", 3, {"drop": None})
    [entry] = nft_entries(mc, parse_nft(old))
    assert (entry.standby, entry.wrong_if, entry.packets) == ((), 3, 43)
    [st] = path_status(mc, [entry], active(2), {SG: ("up0", 3, 0)})
    assert not st.ok and st.forwarded == 40
    assert st.problems == [
        "not taken in on up1 (the uplink path not in use): trips the BMI's side sends there are not forwarded"
    ]
    assert record(TripState(), [st], lambda: None) == [st]
    [st] = path_status(mc, [entry], active(2, up0="up1", up1="up1"), {SG: ("up0", 3, 0)})
    assert st.problems == ["in on up0, but the uplink path in use is up1: trips arriving on up1 are dropped"]
    routing = parse_multicast(section(2, engine="smcroute"), FILE, parse_network(network(2), FILE))
    [st] = path_status(routing, [entry], active(2), {SG: ("up0", 3, 0)})
    assert st.ok and st.expected_standby == () and record(TripState(), [st], lambda: None) == []


def test_a_site_switch_replaces_only_that_sites_rule() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    [before] = wanted_routes(mc, active(2))
    [after] = wanted_routes(mc, active(2, s2p="s2b", s2b="s2b"))
    assert _changes(mc, parse_nft(LISTED), before, after) == [
        'replace rule netdev concentrator_trip sg0 handle 8 counter dup to "s2b" comment "out"'
    ]
    # An uplink switch: "in" and "standby" change places, by handle; both still copy.
    [uplink] = wanted_routes(mc, active(2, up0="up1", up1="up1"))
    assert _changes(mc, parse_nft(LISTED), before, uplink) == [
        "replace rule netdev concentrator_trip in_up0 handle 5 ip saddr 10.0.1.1 ip daddr 239.192.10.1 "
        'counter jump sg0 comment "10.0.1.1 239.192.10.1 standby"',
        "replace rule netdev concentrator_trip in_up1 handle 6 ip saddr 10.0.1.1 ip daddr 239.192.10.1 "
        'counter jump sg0 comment "10.0.1.1 239.192.10.1 in"',
    ]
    # A table an earlier version left (a drop on the other uplink) is re-pointed the same way.
    old = copy.deepcopy(LISTED)
    old["nftables"][3] = rule("in_up1", 6, "10.0.1.1 239.192.10.1 wrong", 3, {"drop": None})
    assert _changes(mc, parse_nft(old), before, uplink) == _changes(mc, parse_nft(LISTED), before, uplink)
    # A rule we put there is gone: no partial change, the caller loads the table again.
    damaged = copy.deepcopy(LISTED)
    del damaged["nftables"][5]
    assert _changes(mc, parse_nft(damaged), before, after) is None


def test_nft_errors_are_one_line_with_the_rule_they_point_at() -> None:
    stderr = (
        "/dev/stdin:15:20-28: Error: Interface does not exist\n"
        '    counter dup to "nosuch0" comment "out"\n'
        "                   ^^^^^^^^^\n"
    )
    assert nft_error(stderr) == (
        '/dev/stdin:15:20-28: Error: Interface does not exist: counter dup to "nosuch0" comment "out"'
    )
    assert nft_error("") == "no message"
