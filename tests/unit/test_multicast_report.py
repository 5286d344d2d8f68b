"""The trip-path report: IGMP memberships as /proc prints them, and the plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from netconfig.trip.report import plain
from netconfig.trip.smcroute import read_igmp_memberships

IGMP = """Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     1      V3
\t\t\t\t010000E0     1 0:00000000\t\t0
1004\tp0        :     2      V3
\t\t\t\t010AC0EF     1 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
"""


def test_memberships_by_group(tmp_path: Path) -> None:
    path = tmp_path / "igmp"
    path.write_text(IGMP)
    assert read_igmp_memberships(str(path)) == {"224.0.0.1": ["lo", "p0"], "239.192.10.1": ["p0"]}


def path_doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "group": "239.192.10.1",
        "source": "10.0.1.1",
        "port": 2404,
        "installed": True,
        "ok": True,
        "inbound": "up1",
        "inbound_role": "uplink backup",
        "outbound": ["s1p", "s2p"],
        "packets_forwarded": 7,
        "wrong_interface": 1,
        "wrong_interface_since_last_check": 0,
        "problems": [],
        "notes": [],
        "members_on_this_host": [],
    }
    doc.update(over)
    return doc


NETD = {"running": True, "pid": 41, "state_file": "/run/n.json", "disagrees": []}
KERNEL = "kernel: multicast routing yes (MRT_INIT on a raw IGMP socket succeeded); nftables dup NO (nft refused)"
SMCROUTE = {"asked": "auto", "engine": "smcroute", "reason": "auto: no nftables dup", "summary": KERNEL}


def test_plain_words() -> None:
    text = plain(
        {
            "ok": True,
            "engine": SMCROUTE,
            "smcrouted": {"engine": "smcroute", "running": True, "pid": 42, "pid_file": "/run/x.pid"},
            "netd": NETD,
            "paths": [path_doc()],
        }
    )
    assert text.splitlines() == [
        KERNEL,
        "engine: smcroute (multicast.engine auto): auto: no nftables dup",
        "smcrouted: running, pid 42",
        "netd: running, pid 41",
        "group 239.192.10.1 (UDP 2404) from 10.0.1.1: forwarded by the kernel, in on up1 (uplink backup), "
        "out on s1p, s2p; 7 packets forwarded, 1 arrived on another interface (0 since the last check)",
        "  no socket on this host is a member of the group",
        "trip path: OK",
    ]
    bad = plain(
        {
            "ok": False,
            "engine": SMCROUTE,
            "smcrouted": {"engine": "smcroute", "running": False, "pid": None, "pid_file": "/run/x.pid"},
            "netd": {"running": False, "pid": None, "state_file": "/run/n.json", "disagrees": []},
            "paths": [
                path_doc(installed=False, ok=False, members_on_this_host=["up0"]),
                path_doc(ok=False, problems=["in on up0, but the uplink path in use is up1"]),
            ],
        }
    )
    assert "smcrouted: NOT RUNNING" in bad and "NOT INSTALLED" in bad and "netd: NOT RUNNING" in bad
    assert "NOT FORWARDED AS NEEDED" in bad and "  in on up0, but the uplink path in use is up1" in bad
    assert "MEMBER OF THE GROUP on up0" in bad and bad.endswith("trip path: NOT OK")


def test_plain_words_of_trips_forwarded_from_the_uplink_path_not_in_use() -> None:
    note = (
        "20 trips arrived on up1, the uplink path not in use, and were forwarded (20 since the last check): "
        "the BMI's side sent them on the other path"
    )
    nft = {**SMCROUTE, "engine": "nftables", "reason": "auto: nftables dup works on this kernel"}
    text = plain(
        {
            "ok": True,
            "engine": nft,
            "smcrouted": {"engine": "nftables", "running": True, "pid": None, "pid_file": None},
            "netd": NETD,
            "paths": [path_doc(inbound="up0", inbound_role="uplink primary", packets_forwarded=30, notes=[note])],
        }
    )
    assert text.splitlines()[4:] == [
        "group 239.192.10.1 (UDP 2404) from 10.0.1.1: forwarded by the kernel, in on up0 (uplink primary), "
        "out on s1p, s2p; 30 packets forwarded, 1 arrived on another interface (0 since the last check)",
        f"  {note}",
        "  no socket on this host is a member of the group",
        "trip path: OK",
    ]


def test_plain_words_of_a_refused_engine() -> None:
    reason = (
        "engine smcroute needs the kernel's IPv4 multicast routing and this kernel has none (MRT_INIT failed "
        "with errno 92 (Protocol not available)): use a kernel built with CONFIG_IP_MROUTE, or set "
        "multicast.engine to nftables or auto"
    )
    engine = {"asked": "smcroute", "engine": None, "reason": reason, "summary": "kernel: multicast routing NO"}
    text = plain({"ok": False, "engine": engine, "smcrouted": None, "netd": NETD, "paths": []})
    assert text.splitlines() == [
        "kernel: multicast routing NO",
        f"engine: REFUSED (multicast.engine smcroute): {reason}",
        "netd: running, pid 41",
        "trip path: NOT OK",
    ]


def test_forwarded_per_group_from_either_engines_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the shedding monitor reads: trips forwarded, each once, from the routing table
    (arrivals on the inbound interface in use, never the ones dropped on the other
    uplink) or the nftables table (arrivals on either uplink path, "in" or "standby",
    never the ones dropped on an uplink that is no inbound interface of the group)."""
    from ipaddress import IPv4Address

    from netconfig.trip import report as tripreport
    from netconfig.trip.tables import KernelEntry, NftRule

    g1, s = IPv4Address("239.192.10.1"), IPv4Address("10.0.1.1")
    monkeypatch.setattr(tripreport, "read_kernel", lambda: [KernelEntry(g1, s, "up0", 9, 900, 2, ("s1p",))])
    monkeypatch.setattr(tripreport, "read_rules_sync", lambda: None)
    assert tripreport.forwarded_by_group() == {"239.192.10.1": 7}
    rules = [
        NftRule("in_up0", 3, "10.0.1.1 239.192.10.2 in", 5, "sg1"),
        NftRule("in_up1", 4, "10.0.1.1 239.192.10.2 standby", 4, "sg1"),
        NftRule("in_up2", 7, "10.0.1.1 239.192.10.2 wrong", 2, None),
        NftRule("sg1", 5, "out", 9, "s1p"),
        NftRule("sg1", 6, "end", 9, None),
    ]
    monkeypatch.setattr(tripreport, "read_kernel", lambda: [])
    monkeypatch.setattr(tripreport, "read_rules_sync", lambda: rules)
    assert tripreport.forwarded_by_group() == {"239.192.10.2": 9}

    def no_library() -> None:
        raise OSError("libnftables.so.1 not loaded")

    monkeypatch.setattr(tripreport, "read_rules_sync", no_library)
    assert tripreport.forwarded_by_group() == {}
