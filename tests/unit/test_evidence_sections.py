"""Sections 3 and 4 of the dossier judged from given facts: the kernel's entries against
the configuration and netd's active paths, netd's switch history. Each rule has its NOT OK."""

from __future__ import annotations

import copy
from typing import Any

from concentrator.config import Config, parse_config
from concentrator.evidence.dossier import failover_section
from concentrator.evidence.trips import Proc, judge

DOC = {
    "uplink": {"listen": "10.0.0.1:2404", "allowed_peers": ["10.0.1.1"]},
    "sites": [
        {
            "name": "site1",
            "common_addresses": [101],
            "endpoints": ["10.1.1.1:2404"],
            "interruptibility": "instantaneous",
        }
    ],
    "network": {
        "service_address": "10.0.0.1",
        "uplink": {
            "destinations": ["10.0.1.1/32"],
            "primary": {"interface": "up0", "gateway": "172.16.0.2"},
            "backup": {"interface": "up1", "gateway": "172.16.1.2"},
        },
        "sites": [
            {
                "name": "site1",
                "destinations": ["10.1.1.1/32"],
                "primary": {"interface": "s1p", "gateway": "172.20.1.2"},
                "backup": {"interface": "s1b", "gateway": "172.21.1.2"},
            }
        ],
    },
    "multicast": {
        "groups": [
            {
                "group": "239.192.10.1",
                "port": 30104,
                "sources": ["10.0.1.1"],
                "inbound": ["up0", "up1"],
                "outbound": ["s1p", "s1b"],
            }
        ]
    },
}
KEY = "10.0.1.1>239.192.10.1"


def config() -> Config:
    return parse_config(copy.deepcopy(DOC), "test.yaml")


def link(active: str = "primary", switches: list[dict[str, Any]] | None = None, healthy: bool = True) -> dict[str, Any]:
    return {
        "active": active,
        "all_down": False,
        "healthy": {"primary": healthy, "backup": True},
        "switches_total": len(switches or []),
        "switches_by_reason": {},
        "all_down_total": 0,
        "recent_switches": switches or [],
    }


def state(**links: dict[str, Any]) -> dict[str, Any]:
    return {"ready": True, "links": {"uplink": links.get("uplink", link()), "site1": links.get("site1", link())}}


def kernel(
    inbound: str | None = "up0", outbound: tuple[str, ...] = ("s1p",), installed: bool = True, packets: int = 10
) -> dict[str, dict[str, Any]]:
    return {
        KEY: {
            "group": "239.192.10.1",
            "source": "10.0.1.1",
            "installed": installed,
            "ok": installed and inbound in ("up0", "up1"),
            "inbound": inbound,
            "outbound": list(outbound),
            "packets_forwarded": packets,
            "wrong_interface": 0,
            "standby_arrivals": 0,
        }
    }


NO_TRIPS: dict[str, Any] = {"groups": {}, "delay": {}, "added_median_us": None}


def trip_findings(
    after: dict[str, Any],
    netd: dict[str, Any],
    procs: list[Proc] | None = None,
    forwarded: dict[str, Any] = NO_TRIPS,
    maddr: str = "",
) -> list[str]:
    c = config()
    assert c.multicast is not None
    return judge(c.multicast, c.network, netd, kernel(packets=0), after, procs or [], forwarded, maddr)["findings"]


def test_the_kernel_forwarding_as_netd_wants_is_ok() -> None:
    assert trip_findings(kernel(), state()) == []
    # netd moved site1 to its backup and the kernel followed.
    assert trip_findings(kernel(outbound=("s1b",)), state(site1=link("backup"))) == []


def test_a_missing_or_stale_kernel_entry_is_not_ok() -> None:
    assert trip_findings(kernel(installed=False, inbound=None, outbound=()), state()) == [
        f"{KEY}: the kernel has no forwarding entry"
    ]
    # The uplink switched to up1 but the entry still comes in on up0.
    [finding] = trip_findings(kernel(), state(uplink=link("backup")))
    assert "in on up0" in finding and "want up1 -> s1p" in finding


def test_a_concentrator_socket_on_the_trip_port_or_a_packet_socket_is_not_ok() -> None:
    relay = Proc(1, "relay", "concentrator relay", [{"kind": "udp", "local": "0.0.0.0", "port": 30104}])
    netd = Proc(2, "netd", "concentrator netd", [{"kind": "packet", "local": "ifindex 3", "port": 0}])
    found = trip_findings(kernel(), state(), [relay, netd])
    assert found == [
        "relay pid 1 has a UDP socket on 0.0.0.0:30104 (a trip port)",
        "netd pid 2 has a packet socket (ifindex 3): it could read trips",
    ]


def test_a_trip_that_came_in_and_did_not_leave_and_a_joined_group_are_not_ok() -> None:
    lost = {
        "groups": {"239.192.10.1": {"in": 5, "copies": {"s1p": 4}, "not_forwarded": 1}},
        "delay": {},
        "added_median_us": None,
    }
    maddr = "3:\tup0\n\tinet  239.192.10.1\n\tinet  224.0.0.1\n"
    found = trip_findings(kernel(), state(), forwarded=lost, maddr=maddr)
    assert found == [
        "group 239.192.10.1: 1 of 5 captured trip datagrams did not leave on any outbound interface unchanged",
        "ip maddr shows a trip group joined: inet  239.192.10.1",
    ]


def switch(outage: float | None) -> dict[str, Any]:
    return {
        "wall_time": 1.8e9,
        "frm": "primary",
        "to": "backup",
        "reason": "probe-loss",
        "outage_seconds": outage,
        "detection_seconds": outage,
        "route_seconds": 0.001,
    }


def test_failover_history_within_the_operators_20_seconds_is_ok_and_beyond_is_not() -> None:
    ok = failover_section(config(), state(uplink=link("backup", [switch(0.3), switch(None)])), "s.json", None)
    assert ok.passed and ok.findings == []
    slow = failover_section(config(), state(site1=link("backup", [switch(21.0)])), "s.json", None)
    assert not slow.passed and slow.findings == ["site1: switch at 1800000000 had an outage of 21.0 s"]


def test_an_unhealthy_active_path_or_no_state_is_not_ok() -> None:
    sick = failover_section(config(), state(uplink=link(healthy=False)), "s.json", None)
    assert sick.findings == ["uplink: active path primary is not healthy"]
    missing = failover_section(config(), None, "/nonexistent.json", None)
    assert not missing.passed and "not readable" in missing.findings[0]


def test_a_live_switch_that_did_not_happen_is_not_ok() -> None:
    live = [
        {"link": "uplink", "interface": "up0", "error": "netd did not switch within 15 s"},
        {
            "link": "site1",
            "interface": "s1p",
            "seen_after_seconds": 0.05,
            "outage_seconds": 0.0,
            "echo_target": "10.1.1.1",
            "echo_outage_seconds": 0.04,
        },
    ]
    section = failover_section(config(), state(), "s.json", live)
    assert section.findings == ["--lab: uplink: netd did not switch within 15 s"]
    live[1]["echo_outage_seconds"] = None
    assert (
        failover_section(config(), state(), "s.json", live).findings[1]
        == "--lab: site1: no echo reply from 10.1.1.1 after the switch"
    )
    live[1]["echo_outage_seconds"] = 25.0
    assert (
        failover_section(config(), state(), "s.json", live).findings[1]
        == "--lab: site1: 25.0 s without an echo reply from 10.1.1.1"
    )
