"""Which trip path engine runs on which kernel (netconfig.trip.capability.choose), from given
probe results: no special kernel needed to see both ways. And the probes themselves,
run on this host as whoever runs the tests."""

from __future__ import annotations

import os
from typing import Any

import pytest

from netconfig.config import parse_network
from netconfig.trip.capability import Capability, Feature, choose, probe_multicast_routing, probe_nftables_dup, resolve
from netconfig.trip.config import MAXVIFS, NFTABLES, SMCROUTE, parse_multicast
from tests.unit.test_multicast_nft import FILE, network, section

NO_ROUTING = Feature(False, "MRT_INIT failed with errno 92 (Protocol not available)")
ROUTING = Feature(True, "MRT_INIT on a raw IGMP socket succeeded")
DUP = Feature(True, "a netdev table with a dup rule loaded and deleted")
NO_DUP = Feature(False, "nft refused a dup rule: Error: Could not process rule: No such file or directory")
UNKNOWN = Feature(None, "MRT_INIT refused: [Errno 1] Operation not permitted (needs root)")

TWELVE_SITES = 2 + 2 * 12  # the uplink's two paths and 12 two-path sites


def test_no_multicast_routing_auto_takes_nftables() -> None:
    c = choose("auto", Capability(NO_ROUTING, DUP), TWELVE_SITES)
    assert (c.engine, c.asked) == (NFTABLES, "auto")
    assert c.reason == "auto: nftables dup works on this kernel"


def test_routing_present_and_within_32_vifs_takes_the_routing_table_where_dup_is_missing() -> None:
    c = choose("auto", Capability(ROUTING, NO_DUP), TWELVE_SITES)
    assert c.engine == SMCROUTE and "the multicast routing table instead" in c.reason
    assert choose("auto", Capability(ROUTING, NO_DUP), MAXVIFS).engine == SMCROUTE
    # Past 32 VIFs the routing table cannot do it: refused, with both reasons.
    c = choose("auto", Capability(ROUTING, NO_DUP), MAXVIFS + 1)
    assert c.engine is None and "33 interfaces, more than 32 VIFs" in c.reason


def test_where_both_work_auto_takes_nftables_the_faster_with_no_daemon() -> None:
    # docs/trip-path.md: dup is faster at every size measured and needs no daemon.
    assert choose("auto", Capability(ROUTING, DUP), TWELVE_SITES).engine == NFTABLES
    assert choose("auto", Capability(ROUTING, DUP), 202).engine == NFTABLES


def test_explicit_smcroute_without_multicast_routing_is_refused_with_reason_and_remedy() -> None:
    c = choose("smcroute", Capability(NO_ROUTING, DUP), TWELVE_SITES)
    assert c.engine is None
    assert c.reason == (
        "engine smcroute needs the kernel's IPv4 multicast routing and this kernel has none "
        "(MRT_INIT failed with errno 92 (Protocol not available)): use a kernel built with CONFIG_IP_MROUTE, "
        "or set multicast.engine to nftables or auto"
    )
    # With routing it is what was asked for, dup or not.
    assert choose("smcroute", Capability(ROUTING, DUP), TWELVE_SITES).engine == SMCROUTE
    assert choose("smcroute", Capability(ROUTING, NO_DUP), TWELVE_SITES).engine == SMCROUTE


def test_explicit_nftables_without_dup_is_refused_and_neither_feature_refuses_auto() -> None:
    c = choose("nftables", Capability(ROUTING, NO_DUP), TWELVE_SITES)
    assert c.engine is None and "CONFIG_NF_DUP_NETDEV" in c.reason and "multicast.engine to auto" in c.reason
    c = choose("auto", Capability(NO_ROUTING, NO_DUP), TWELVE_SITES)
    assert c.engine is None and "no engine on this kernel" in c.reason and "errno 92" in c.reason


def test_a_probe_that_could_not_run_refuses_nothing() -> None:
    """Unknown (no root for the probe, e.g. check-config as a user): the configuration
    is taken at its word; netd, as root, probes for real."""
    assert choose("smcroute", Capability(UNKNOWN, UNKNOWN), TWELVE_SITES).engine == SMCROUTE
    c = choose("auto", Capability(UNKNOWN, UNKNOWN), TWELVE_SITES)
    assert c.engine == NFTABLES and "not verified" in c.reason


def test_resolve_replaces_auto_by_the_engine_and_keeps_the_rest() -> None:
    mc = parse_multicast(section(12), FILE, parse_network(network(12), FILE))
    resolved, choice = resolve(mc, Capability(NO_ROUTING, DUP))
    assert resolved is not None and resolved.engine == NFTABLES and resolved.groups == mc.groups
    asked: dict[str, Any] = section(12, engine="smcroute")
    refused, choice = resolve(
        parse_multicast(asked, FILE, parse_network(network(12), FILE)), Capability(NO_ROUTING, DUP)
    )
    assert refused is None and choice.engine is None and "CONFIG_IP_MROUTE" in choice.reason


def test_the_probes_on_this_host_say_present_absent_or_why_they_could_not_tell() -> None:
    """Whatever the kernel: a definite answer as root, None with the reason otherwise.
    The errno-92 case itself is checked in the namespace tests on a kernel without it."""
    for feature in (probe_multicast_routing(), probe_nftables_dup()):
        if os.geteuid() == 0:
            assert feature.present is not None, feature
        else:
            assert feature.present is None and "needs root" in feature.how, feature
    if os.geteuid() == 0 and not os.path.exists("/proc/net/ip_mr_vif"):
        # No multicast routing in this kernel: MRT_INIT must say so, with errno 92.
        assert probe_multicast_routing() == Feature(False, "MRT_INIT failed with errno 92 (Protocol not available)")


@pytest.mark.parametrize("asked", ["auto", "smcroute", "nftables"])
def test_every_choice_says_what_was_asked(asked: str) -> None:
    for cap in (Capability(ROUTING, DUP), Capability(NO_ROUTING, DUP), Capability(ROUTING, NO_DUP)):
        c = choose(asked, cap, TWELVE_SITES)
        assert c.asked == asked and c.reason


def test_a_trip_test_skips_on_the_probe_alone_never_on_a_missing_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests.lab.harness.require_engine: `smcroute` skips where MRT_INIT failed, with the
    probe's reason; where the kernel has multicast routing, a missing smcrouted is a
    failure in CI (CI=true), not a skip."""
    import netconfig.trip.capability
    from tests.lab import harness

    assert harness.engine_unavailable(SMCROUTE, Capability(NO_ROUTING, DUP)) == (
        "engine smcroute needs the kernel's IPv4 multicast routing: "
        "MRT_INIT failed with errno 92 (Protocol not available)"
    )
    assert harness.engine_unavailable(SMCROUTE, Capability(ROUTING, DUP)) is None
    assert harness.engine_unavailable(NFTABLES, Capability(NO_ROUTING, DUP)) is None

    monkeypatch.setattr(netconfig.trip.capability, "probe", lambda: Capability(NO_ROUTING, DUP))
    with pytest.raises(pytest.skip.Exception, match="errno 92"):
        harness.require_engine(SMCROUTE)
    assert harness.require_engine("auto") == NFTABLES

    # Multicast routing present, smcrouted not on PATH: CI fails, it does not skip.
    monkeypatch.setattr(netconfig.trip.capability, "probe", lambda: Capability(ROUTING, DUP))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("tests.conftest.IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="needs smcrouted: apt-get install smcroute"):
        harness.require_engine(SMCROUTE)
