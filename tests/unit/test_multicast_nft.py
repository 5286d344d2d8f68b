"""The nftables engine of the trip path (past 32 multicast interfaces): the table's
text, the rules read back from `nft -j`, and the changes of one switch (no root)."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address
from typing import Any

from netconfig.config import parse_network
from netconfig.trip.config import AUTO, NFTABLES, SMCROUTE, parse_multicast
from netconfig.trip.nftables import _changes
from netconfig.trip.plan import wanted_routes
from netconfig.trip.render import nft_ruleset
from netconfig.trip.tables import nft_entries, nft_error, parse_nft
from netconfig.trip.verdict import path_status

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


def test_the_table_copies_once_per_site_path_in_use_and_counts_the_other_uplink() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    text = nft_ruleset(mc, wanted_routes(mc, active(2)))
    assert text.startswith("table netdev concentrator_trip {}\ndelete table netdev concentrator_trip\n")
    assert (
        '  chain in_up0 {\n    type filter hook ingress device "up0" priority 0; policy accept;\n'
        '    ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter jump sg0 comment "10.0.1.1 239.192.10.1 in"\n'
    ) in text
    assert 'ip saddr 10.0.1.1 ip daddr 239.192.10.1 counter drop comment "10.0.1.1 239.192.10.1 wrong"' in text
    assert (
        '  chain sg0 {\n    counter dup to "s1p" comment "out"\n    counter dup to "s2p" comment "out"\n'
        '    counter drop comment "end"\n  }\n'
    ) in text


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
        rule("in_up1", 6, "10.0.1.1 239.192.10.1 wrong", 3, {"drop": None}),
        rule("sg0", 7, "out", 40, {"dup": {"addr": "s1p"}}),
        rule("sg0", 8, "out", 40, {"dup": {"addr": "s2p"}}),
        rule("sg0", 9, "end", 40, {"drop": None}),
    ]
}


def test_rules_read_back_are_judged_like_the_routing_table() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    [entry] = nft_entries(mc, parse_nft(LISTED))
    assert (entry.inbound, entry.outbound, entry.packets, entry.wrong_if) == ("up0", ("s1p", "s2p"), 43, 3)
    [st] = path_status(mc, [entry], active(2), {(IPv4Address("10.0.1.1"), IPv4Address("239.192.10.1")): ("up0", 3)})
    assert st.ok and st.forwarded == 40
    [st] = path_status(mc, [entry], active(2, s2p="s2b", s2b="s2b"), None)
    assert not st.ok and "not sent on s2b (path in use of a member site)" in st.problems


def test_a_site_switch_replaces_only_that_sites_rule() -> None:
    mc = parse_multicast(section(2, engine="nftables"), FILE, parse_network(network(2), FILE))
    [before] = wanted_routes(mc, active(2))
    [after] = wanted_routes(mc, active(2, s2p="s2b", s2b="s2b"))
    assert _changes(mc, parse_nft(LISTED), before, after) == [
        'replace rule netdev concentrator_trip sg0 handle 8 counter dup to "s2b" comment "out"'
    ]
    [uplink] = wanted_routes(mc, active(2, up0="up1", up1="up1"))
    assert _changes(mc, parse_nft(LISTED), before, uplink) == [
        "replace rule netdev concentrator_trip in_up0 handle 5 ip saddr 10.0.1.1 ip daddr 239.192.10.1 "
        'counter drop comment "10.0.1.1 239.192.10.1 wrong"',
        "replace rule netdev concentrator_trip in_up1 handle 6 ip saddr 10.0.1.1 ip daddr 239.192.10.1 "
        'counter jump sg0 comment "10.0.1.1 239.192.10.1 in"',
    ]
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
