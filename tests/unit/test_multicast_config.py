"""The `multicast:` section: validation, the routes wanted per active path, smcroute's
file, and the kernel's tables as /proc prints them (no sockets, no root)."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from concentrator.config import ConfigError, load_config
from netconfig.config import parse_network
from netconfig.trip.config import parse_multicast
from netconfig.trip.plan import MRoute, wanted_routes
from netconfig.trip.render import smcroute_conf
from netconfig.trip.tables import parse_mr_cache, parse_vifs
from netconfig.trip.verdict import path_status
from tests.unit.test_multicast_nft import network

FILE = "conc.yaml"
NETWORK = network(2)
GOOD: dict[str, Any] = {
    "groups": [
        {
            "group": "239.192.10.1",
            "port": 2404,
            "sources": ["10.0.1.1", "10.0.1.2"],
            "inbound": ["up0", "up1"],
            "outbound": ["s1p", "s1b", "s2p", "s2b"],
        }
    ],
}


def error(mutate: Any, network: bool = False) -> ConfigError:
    raw = copy.deepcopy(GOOD)
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_multicast(raw, FILE, parse_network(NETWORK, FILE) if network else None)
    return info.value


def test_good_section() -> None:
    mc = parse_multicast(GOOD, FILE, parse_network(NETWORK, FILE))
    [g] = mc.groups
    assert (g.group, g.port, g.sources) == (
        IPv4Address("239.192.10.1"),
        2404,
        (IPv4Address("10.0.1.1"), IPv4Address("10.0.1.2")),
    )
    assert mc.interfaces == ("up0", "up1", "s1p", "s1b", "s2p", "s2b")
    assert mc.smcroute.socket == "/run/concentrator/smcroute.sock"


@pytest.mark.parametrize(
    ("mutate", "key", "expected"),
    [
        (lambda d: d.pop("groups"), "multicast.groups", "a value"),
        (lambda d: d.update(groups=[]), "multicast.groups", "a non-empty list of trip groups"),
        (lambda d: d.update(group=1), "multicast.group", "a key allowed in multicast"),
        (lambda d: d["groups"][0].update(group="10.0.0.1"), "multicast.groups[0].group", "a multicast group"),
        (lambda d: d["groups"][0].update(group="224.0.0.5"), "multicast.groups[0].group", "a multicast group"),
        (lambda d: d["groups"][0].update(port=0), "multicast.groups[0].port", "a UDP port from 1 to 65535"),
        (lambda d: d["groups"][0].update(port=True), "multicast.groups[0].port", "a UDP port from 1 to 65535"),
        (lambda d: d["groups"][0].pop("sources"), "multicast.groups[0].sources", "a value"),
        (lambda d: d["groups"][0].update(sources=["239.1.1.1"]), "multicast.groups[0].sources[0]", "a unicast"),
        (
            lambda d: d["groups"][0].update(sources=["10.0.1.1", "10.0.1.1"]),
            "multicast.groups[0].sources[1]",
            "a source listed once",
        ),
        (lambda d: d["groups"][0].update(inbound=[]), "multicast.groups[0].inbound", "a non-empty list"),
        (
            lambda d: d["groups"][0].update(outbound=["s1p", "up0"]),
            "multicast.groups[0].outbound[1]",
            "an interface that is not inbound",
        ),
        (
            lambda d: d["groups"][0].update(outbound=["s1p", "s1p"]),
            "multicast.groups[0].outbound[1]",
            "an interface listed once",
        ),
        (
            lambda d: d["groups"][0].update(outbound=["a/b"]),
            "multicast.groups[0].outbound[0]",
            "a Linux interface name",
        ),
        (lambda d: d["groups"].append(dict(d["groups"][0])), "multicast.groups[1].group", "a group not already in"),
        (lambda d: d.update(smcroute={"socket": "rel.sock"}), "multicast.smcroute.socket", "an absolute path"),
        (
            lambda d: (d.update(engine="smcroute"), d["groups"][0].update(outbound=[f"x{i}" for i in range(31)])),
            "multicast.groups",
            "at most 32 interfaces in all with engine smcroute",
        ),
        (lambda d: d.update(engine="tc"), "multicast.engine", "auto or smcroute or nftables"),
    ],
)
def test_errors_name_the_key(mutate: Any, key: str, expected: str) -> None:
    err = error(mutate)
    assert err.key == key and err.expected.startswith(expected), (err.key, err.expected)


def test_inbound_must_be_an_uplink_path_when_network_is_given() -> None:
    err = error(lambda d: d["groups"][0].update(inbound=["up0", "eth9"]), network=True)
    assert (err.key, err.expected) == ("multicast.groups[0].inbound[1]", "an uplink interface (up0, up1)")


def test_wanted_routes_follow_the_active_paths() -> None:
    mc = parse_multicast(GOOD, FILE)
    active = {"up0": "up0", "up1": "up0", "s1p": "s1p", "s1b": "s1p", "s2p": "s2p", "s2b": "s2p"}
    routes = wanted_routes(mc, active)
    assert [(str(r.source), r.inbound, r.outbound) for r in routes] == [
        ("10.0.1.1", "up0", ("s1p", "s2p")),
        ("10.0.1.2", "up0", ("s1p", "s2p")),
    ]
    # Uplink on its backup, site1 on its backup: one inbound, one copy per site.
    active.update({"up0": "up1", "up1": "up1", "s1p": "s1b", "s1b": "s1b"})
    assert {(r.inbound, r.outbound) for r in wanted_routes(mc, active)} == {("up1", ("s1b", "s2p"))}
    # The uplink's other path: where the nftables engine takes the group in too.
    assert {r.standby for r in wanted_routes(mc, active)} == {("up0",)}
    # Interfaces under no link: used as listed (inbound: the first).
    assert {(r.inbound, r.outbound) for r in wanted_routes(mc, {})} == {("up0", ("s1p", "s1b", "s2p", "s2b"))}


def test_smcroute_file_enables_only_our_interfaces_and_never_joins() -> None:
    mc = parse_multicast(GOOD, FILE)
    text = smcroute_conf(mc, [MRoute(IPv4Address("10.0.1.1"), IPv4Address("239.192.10.1"), "up1", ("s1p", "s2p"))])
    assert "phyint up0 enable\nphyint up1 enable\nphyint s1p enable" in text
    assert "mroute from up1 source 10.0.1.1 group 239.192.10.1 to s1p s2p\n" in text
    assert "mgroup" not in text and "mrdisc" not in text


VIF = """Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote
 0 up0            3400      50         0       0 00008 000003E8 00000000
 1 up1               0       0         0       0 00008 000003EA 00000000
 2 s1p               0       0      3400      50 00008 000003EC 00000000
 4 s2p               0       0      3400      50 00008 000003F0 00000000
"""
CACHE = """Group    Origin   Iif     Pkts    Bytes    Wrong Oifs
010AC0EF 0101000A 0         50     3400        2  2:1    4:1
"""


def test_kernel_tables_are_read_as_proc_prints_them() -> None:
    [e] = parse_mr_cache(CACHE, parse_vifs(VIF))
    assert (str(e.group), str(e.source), e.inbound, e.packets, e.bytes, e.wrong_if, e.outbound) == (
        "239.192.10.1",
        "10.0.1.1",
        "up0",
        50,
        3400,
        2,
        ("s1p", "s2p"),
    )


ACTIVE = {"up0": "up0", "up1": "up0", "s1p": "s1p", "s1b": "s1p", "s2p": "s2p", "s2b": "s2p"}


def test_status_judges_the_paths_in_use_and_counts_forwarded_packets() -> None:
    mc = parse_multicast(GOOD, FILE)
    first, second = path_status(mc, parse_mr_cache(CACHE, parse_vifs(VIF)), ACTIVE, None)
    # The kernel's 50 include the 2 wrong-interface arrivals; with no earlier check,
    # those 2 count as new: NOT OK.
    assert first.installed and first.forwarded == 48 and first.wrong_if_new == 2 and not first.ok
    assert not second.installed and not second.ok  # 10.0.1.2 has no entry
    assert first.to_json()["wrong_interface"] == 2 and first.to_json()["outbound"] == ["s1p", "s2p"]
    # The same counts at the next check: nothing new, OK.
    [again, _] = path_status(
        mc, parse_mr_cache(CACHE, parse_vifs(VIF)), ACTIVE, {(first.source, first.group): ("up0", 2, 0)}
    )
    assert again.ok and again.problems == []
    # A lower count than last time is a new entry: all of it is new.
    [fresh, _] = path_status(
        mc, parse_mr_cache(CACHE, parse_vifs(VIF)), ACTIVE, {(first.source, first.group): ("up0", 5, 0)}
    )
    assert fresh.wrong_if_new == 2 and not fresh.ok


def test_status_is_not_ok_when_the_entry_does_not_follow_the_paths_in_use() -> None:
    mc = parse_multicast(GOOD, FILE)
    last = {(IPv4Address("10.0.1.1"), IPv4Address("239.192.10.1")): ("up0", 2, 0)}
    entries = parse_mr_cache(CACHE, parse_vifs(VIF))
    # The uplink is routed over up1 (netd dead, primary down): the entry on up0 drops every trip.
    [st, _] = path_status(mc, entries, {**ACTIVE, "up0": "up1", "up1": "up1"}, last)
    assert not st.ok and st.expected_inbound == "up1"
    assert st.problems == ["in on up0, but the uplink path in use is up1: trips arriving on up1 are dropped"]
    # Site 1 moved to its backup: its copy still goes to the dead primary.
    [st, _] = path_status(mc, entries, {**ACTIVE, "s1p": "s1b", "s1b": "s1b"}, last)
    assert not st.ok and st.expected_outbound == ("s1b", "s2p")
    assert st.problems[0] == "not sent on s1b (path in use of a member site)"


def test_registered_in_the_appliance_file(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "conf" / "concentrator.yaml"
    text = example.read_text()
    config = load_config(example)
    assert config.multicast is not None
    (group,) = config.multicast.groups
    # 12 two-path sites and the uplink's two paths: within the kernel's 32 interfaces.
    assert group.inbound == ("bmi0", "bmi1") and len(group.outbound) == 24
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("inbound: [bmi0, bmi1]", "inbound: [bmi0, eth9]"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "multicast.groups[0].inbound[1]"


def test_each_protected_link_gets_both_paths_whatever_the_lists_name() -> None:
    raw = copy.deepcopy(GOOD)
    raw["groups"][0].update(inbound=["up1"], outbound=["s1p", "s2b"])
    [g] = parse_multicast(raw, FILE, parse_network(NETWORK, FILE)).groups
    assert (g.inbound, g.outbound) == (("up1", "up0"), ("s1p", "s1b", "s2b", "s2p"))


def test_a_bad_multicast_section_leaves_netd_its_network(tmp_path: Path, caplog: Any) -> None:
    from netconfig.netd import load_sections

    raw = copy.deepcopy(GOOD)
    raw["groups"][0]["group"] = "10.0.0.1"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"network": NETWORK, "multicast": raw}))
    network, multicast = load_sections(str(path))
    assert multicast is None and [link.name for link in network.links] == ["uplink", "site1", "site2"]
    assert "trip path disabled, link failover runs" in caplog.text and "multicast.groups[0].group" in caplog.text
