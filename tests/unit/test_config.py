"""Configuration loading and validation (no sockets)."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from concentrator.config import (
    Config,
    ConfigError,
    Endpoint,
    SiteConfig,
    load_config,
    parse_config,
)
from concentrator.iec104.link import LinkParams

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "concentrator.yaml"
FILE = "test.yaml"

BASE: dict[str, Any] = {
    "uplink": {"listen": "0.0.0.0:2404", "allowed_peers": ["10.1.0.10", "10.2.0.0/24"]},
    "sites": [
        {
            "name": f"site-{i:02d}",
            "common_addresses": [100 + i],
            "endpoints": [f"192.0.2.{10 + i}:2404", f"198.51.100.{10 + i}:2404"],
            "interruptibility": "instantaneous" if i % 2 else "emergency",
        }
        for i in range(1, 5)
    ],
}


def parse(mutate: Callable[[dict[str, Any]], None] | None = None) -> Config:
    data = copy.deepcopy(BASE)
    if mutate is not None:
        mutate(data)
    return parse_config(data, FILE)


def error(mutate: Callable[[dict[str, Any]], None]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(mutate)
    return info.value


def check(err: ConfigError, key: str, expected: str, file: str = FILE) -> None:
    """The error names the file, the key and what was expected, in attributes and message."""
    assert err.file == file
    assert err.key == key
    assert expected in err.expected
    assert str(err).startswith(f"{file}: {key}: expected ")
    assert expected in str(err)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "concentrator.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


# --------------------------------------------------------------------------- the example


def test_example_config_loads_with_12_sites() -> None:
    config = load_config(EXAMPLE)
    assert config.file == str(EXAMPLE)
    assert len(config.sites) == 12
    assert [s.name for s in config.sites] == [f"site-{i:02d}" for i in range(1, 13)]
    assert [s.common_addresses for s in config.sites] == [(ca,) for ca in range(101, 113)]
    for site in config.sites:
        assert len(site.endpoints) == 2
        primary, backup = site.endpoints
        assert ipaddress.ip_address(primary.host) in ipaddress.ip_network("192.0.2.0/24")
        assert ipaddress.ip_address(backup.host) in ipaddress.ip_network("198.51.100.0/24")
    assert {s.interruptibility for s in config.sites} == {"instantaneous", "emergency"}
    assert config.uplink.listen == Endpoint("0.0.0.0", 2404)
    assert config.uplink.allows("10.1.0.10") and config.uplink.allows("10.2.0.10")
    assert config.uplink.params == LinkParams()
    assert config.metrics.listen == Endpoint("127.0.0.1", 9104)


def test_load_config_records_hash_and_mtime_of_raw_bytes() -> None:
    config = load_config(EXAMPLE)
    assert config.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert config.mtime == os.stat(EXAMPLE).st_mtime


# --------------------------------------------------------------------------- valid input


def test_defaults() -> None:
    config = parse()
    assert config.file == FILE and config.sha256 == "" and config.mtime == 0.0
    assert config.uplink.params == LinkParams()
    assert all(site.params == LinkParams() for site in config.sites)
    assert config.metrics.listen == Endpoint("127.0.0.1", 9104)


def test_per_site_overrides_apply_to_that_site_only() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["uplink"].update(k=20, w=10)
        d["sites"][1].update(k=4, w=3, t0=5, t1=7.5, t2=2.5, t3=60)

    config = parse(mutate)
    assert config.sites[1].params == LinkParams(k=4, w=3, t0=5.0, t1=7.5, t2=2.5, t3=60.0)
    assert config.uplink.params == LinkParams(k=20, w=10)
    # Sites start from the IEC defaults, not from the uplink's values.
    assert config.sites[0].params == LinkParams()
    assert config.sites[2].params == LinkParams()


def test_timers_accept_int_and_float() -> None:
    config = parse(lambda d: d["uplink"].update(t1=12, t2=0.5))
    assert config.uplink.params.t1 == 12.0 and isinstance(config.uplink.params.t1, float)
    assert config.uplink.params.t2 == 0.5


def test_endpoints_ipv6_hostnames_and_str() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["uplink"]["listen"] = "[::]:2404"
        d["sites"][0]["endpoints"] = ["[2001:db8::0011]:2404"]
        d["sites"][1]["endpoints"] = ["UPDC-2.example.net:2405", "192.0.2.99:2404"]

    config = parse(mutate)
    assert config.uplink.listen == Endpoint("::", 2404)
    assert str(config.uplink.listen) == "[::]:2404"
    assert config.sites[0].endpoints == (Endpoint("2001:db8::11", 2404),)
    assert str(config.sites[0].endpoints[0]) == "[2001:db8::11]:2404"
    assert config.sites[1].endpoints[0] == Endpoint("updc-2.example.net", 2405)
    assert str(config.sites[1].endpoints[1]) == "192.0.2.99:2404"


def test_uplink_allows() -> None:
    uplink = parse().uplink
    assert uplink.allows("10.1.0.10")
    assert uplink.allows("10.2.0.77")  # in 10.2.0.0/24
    assert uplink.allows("::ffff:10.1.0.10")  # IPv4 peer seen on an IPv6 socket
    assert not uplink.allows("10.1.0.11")
    assert not uplink.allows("2001:db8::1")
    assert not uplink.allows("not an address")


def test_site_for() -> None:
    config = parse(lambda d: d["sites"][2].update(common_addresses=[103, 203]))
    site = config.site_for(203)
    assert isinstance(site, SiteConfig) and site.name == "site-03"
    assert config.site_for(101) is config.sites[0]
    assert config.site_for(999) is None
    assert config.site_for(65535) is None  # broadcast belongs to no single site


def test_config_is_frozen_and_hashable() -> None:
    config = parse()
    with pytest.raises(AttributeError):
        config.sites = ()  # type: ignore[misc]
    assert hash(config) == hash(parse())


# --------------------------------------------------------------------------- errors


def test_error_message_format() -> None:
    err = ConfigError("f.yaml", "uplink.k", "an integer", "12")
    assert not err.missing and str(err) == "f.yaml: uplink.k: expected an integer, got '12'"
    err = ConfigError("f.yaml", "uplink.listen", "host:port")
    assert err.missing and str(err) == "f.yaml: uplink.listen: expected host:port, missing"


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(None, FILE)
    check(info.value, "(top level)", "a mapping with keys uplink, sites, metrics")


def test_unknown_top_level_key() -> None:
    err = error(lambda d: d.update(sitse=[]))
    allowed = "uplink, sites, metrics, network, multicast, mqtt, shedding, ha, incidents"
    check(err, "sitse", f"a key allowed in the top level ({allowed})")


def test_unknown_uplink_key() -> None:
    err = error(lambda d: d["uplink"].update(lisen="0.0.0.0:2404"))
    allowed = "listen, allowed_peers, max_connections, foreign_ca, k, w, t0, t1, t2, t3"
    check(err, "uplink.lisen", f"a key allowed in uplink ({allowed})")
    assert err.got == "lisen"


def test_unknown_site_key() -> None:
    err = error(lambda d: d["sites"][3].update(enpoints=["192.0.2.1:2404"]))
    check(err, "sites[3].enpoints", "a key allowed in sites[3] (name, common_addresses, endpoints")


def test_unknown_metrics_key() -> None:
    err = error(lambda d: d.update(metrics={"port": 9104}))
    check(err, "metrics.port", "a key allowed in metrics (listen)")


def test_missing_section() -> None:
    err = error(lambda d: d.pop("uplink"))
    check(err, "uplink", "a mapping with keys listen, allowed_peers")
    assert err.missing and str(err).endswith(", missing")


def test_missing_key() -> None:
    err = error(lambda d: d["sites"][2].pop("interruptibility"))
    check(err, "sites[2].interruptibility", "instantaneous or emergency")
    assert err.missing


def test_wrong_section_type() -> None:
    check(error(lambda d: d.update(sites={"name": "x"})), "sites", "a non-empty list of sites")
    check(error(lambda d: d["sites"].__setitem__(1, "site-02")), "sites[1]", "a mapping with keys name,")


def test_empty_lists() -> None:
    check(error(lambda d: d.update(sites=[])), "sites", "a non-empty list of sites")
    check(error(lambda d: d["uplink"].update(allowed_peers=[])), "uplink.allowed_peers", "a non-empty list")
    check(error(lambda d: d["sites"][0].update(endpoints=[])), "sites[0].endpoints", "1 or 2 endpoints")
    err = error(lambda d: d["sites"][0].update(common_addresses=[]))
    check(err, "sites[0].common_addresses", "non-empty")


@pytest.mark.parametrize("value", [True, "12", 12.0, None])
def test_window_must_be_an_integer(value: object) -> None:
    err = error(lambda d: d["uplink"].update(k=value))
    check(err, "uplink.k", "an integer from 1 to 32767")
    assert err.got == value


@pytest.mark.parametrize("value", ["15s", True, None, float("inf"), float("nan")])
def test_timer_must_be_a_finite_number(value: object) -> None:
    err = error(lambda d: d["sites"][1].update(t1=value))
    check(err, "sites[1].t1", "a number of seconds")


@pytest.mark.parametrize("value", ["192.0.2.11:0", "192.0.2.11:65536", "192.0.2.11:", "192.0.2.11", "192.0.2.11:+24"])
def test_endpoint_port_out_of_range_or_absent(value: str) -> None:
    err = error(lambda d: d["sites"][3]["endpoints"].__setitem__(1, value))
    check(err, "sites[3].endpoints[1]", "a port from 1 to 65535")
    assert err.got == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2404, '"host:port" as quoted text'),
        (["::"], '"host:port" as quoted text'),  # unquoted [::]:2404 in YAML
        ("2001:db8::1:2404", "an IPv6 address in brackets"),
        ("[192.0.2.1]:2404", "an IPv6 address in brackets"),
        ("192.0.2.300:2404", "an IP address or host name"),
        ("bad_host!:2404", "an IP address or host name"),
    ],
)
def test_endpoint_malformed(value: object, expected: str) -> None:
    err = error(lambda d: d["sites"][0]["endpoints"].__setitem__(0, value))
    check(err, "sites[0].endpoints[0]", expected)


def test_listen_must_be_an_ip_address() -> None:
    err = error(lambda d: d["uplink"].update(listen="localhost:2404"))
    check(err, "uplink.listen", "an IP address and port")


def test_too_many_or_identical_endpoints() -> None:
    three = ["192.0.2.1:2404", "192.0.2.2:2404", "192.0.2.3:2404"]
    check(error(lambda d: d["sites"][0].update(endpoints=three)), "sites[0].endpoints", "1 or 2 endpoints")
    same = ["192.0.2.1:2404", "192.0.2.1:2404"]
    err = error(lambda d: d["sites"][0].update(endpoints=same))
    check(err, "sites[0].endpoints[1]", "different from the primary")


@pytest.mark.parametrize("value", [0, 65535, 65536, -1, True, "101"])
def test_common_address_out_of_range_or_wrong_type(value: object) -> None:
    err = error(lambda d: d["sites"][2]["common_addresses"].append(value))
    check(err, "sites[2].common_addresses[1]", "a common address from 1 to 65534")


def test_duplicate_common_address_names_both_sites() -> None:
    err = error(lambda d: d["sites"][2].update(common_addresses=[301, 101]))
    check(err, "sites[2].common_addresses[1]", "unique across all sites")
    assert "site-03" in err.expected and "site-01" in err.expected and "sites[0]" in err.expected
    assert err.got == 101


def test_duplicate_common_address_within_a_site() -> None:
    err = error(lambda d: d["sites"][2].update(common_addresses=[103, 103]))
    check(err, "sites[2].common_addresses[1]", "each common address once")


def test_duplicate_site_name() -> None:
    err = error(lambda d: d["sites"][3].update(name="site-02"))
    check(err, "sites[3].name", "a name no other site has (sites[1] has it)")


@pytest.mark.parametrize("value", ["", "site 1", "site/1", 7, None])
def test_bad_site_name(value: object) -> None:
    err = error(lambda d: d["sites"][0].update(name=value))
    check(err, "sites[0].name", "a non-empty name of letters, digits")


def test_bad_interruptibility() -> None:
    err = error(lambda d: d["sites"][1].update(interruptibility="fast"))
    check(err, "sites[1].interruptibility", "instantaneous or emergency")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.0.300", "an IP address or network"),
        (101, "an IP address or network"),
        ("10.1.0.10/24", "a network without host bits (10.1.0.0/24?)"),
    ],
)
def test_bad_allowed_peer(value: object, expected: str) -> None:
    err = error(lambda d: d["uplink"]["allowed_peers"].append(value))
    check(err, "uplink.allowed_peers[2]", expected)


def test_metrics_listen_must_not_clash_with_uplink() -> None:
    err = error(lambda d: d.update(metrics={"listen": "127.0.0.1:2404"}))  # uplink is 0.0.0.0:2404
    check(err, "metrics.listen", "other than uplink.listen (0.0.0.0:2404)")


# --------------------------------------------------------------------------- LinkParams problems


def test_t2_not_below_t1_reported_with_key_path() -> None:
    err = error(lambda d: d["uplink"].update(t1=10, t2=10))
    check(err, "uplink.t2", "less than t1 (10.0 s)")


def test_w_above_k_reported_with_key_path() -> None:
    err = error(lambda d: d["sites"][1].update(k=4, w=6))
    check(err, "sites[1].w", "at most k (4)")
    assert err.got == 6


def test_problem_with_a_default_value_says_so() -> None:
    err = error(lambda d: d["sites"][1].update(k=4))  # w stays at its default 8
    check(err, "sites[1].w", "at most k (4)")
    assert "w is not set here, so its default applies" in err.expected


@pytest.mark.parametrize(("key", "value"), [("k", 0), ("w", 40000), ("t0", 0), ("t3", -1.5)])
def test_window_and_timer_ranges(key: str, value: object) -> None:
    err = error(lambda d: d["sites"][0].update({key: value}))
    check(err, f"sites[0].{key}", "from 1 to 32767" if key in "kw" else "a positive number of seconds")


# --------------------------------------------------------------------------- files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check(info.value, "(file)", "a readable YAML file", file=str(path))
    assert info.value.got == "No such file or directory"


def test_unreadable_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    check(info.value, "(file)", "a readable YAML file", file=str(tmp_path))


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b'uplink:\n  listen: "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check(info.value, "(file)", "UTF-8 text", file=str(path))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'uplink:\n  listen: "0.0.0.0:2404"\n  allowed_peers: [10.1.0.10\nsites: []\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.line == 4
    check(err, "line 4, column 6", "valid YAML", file=str(path))


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("  k: 12", "  k: 12\n  k: 20", 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    first = text.splitlines().index("  k: 12") + 1
    assert err.line == first + 1
    expected = f"each key once per mapping (first at line {first})"
    check(err, f"line {first + 1}, column 3", expected, file=str(path))
    assert err.got == "k"


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    # A site built from another with a merge key, overriding some of the merged keys.
    text = """\
uplink: {listen: "0.0.0.0:2404", allowed_peers: ["10.1.0.10"]}
sites:
  - &first
    name: site-01
    common_addresses: [101]
    endpoints: ["192.0.2.11:2404"]
    interruptibility: emergency
    t3: 30
  - <<: *first
    name: site-02
    common_addresses: [102]
    t3: 40
"""
    config = load_config(write(tmp_path, text))
    second = config.sites[1]
    assert (second.name, second.common_addresses, second.params.t3) == ("site-02", (102,), 40.0)
    assert second.interruptibility == "emergency"


def test_yaml_refused_character_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'uplink:\n  listen: "0.0.0.0:2404\x07"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check(info.value, "line 2, column 24", "valid YAML", file=str(path))
    assert info.value.got == "character U+0007"


def test_yaml_yes_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.read_text(encoding="utf-8").replace("  k: 12", "  k: yes", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check(info.value, "uplink.k", "an integer", file=str(path))
    assert info.value.got is True


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    check(info.value, "(top level)", "a mapping with keys uplink, sites, metrics", file=str(path))


# --------------------------------------------------------------------------- network


def test_example_network_section_is_parsed_by_the_link_manager() -> None:
    config = load_config(EXAMPLE)
    assert config.network is not None
    assert [site.name for site in config.network.sites] == [s.name for s in config.sites]
    assert config.network.metrics_listen == Endpoint("127.0.0.1", 9105)


def test_network_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("primary: {interface: bmi0,", "primary: {interface: 7,")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.key == "network.uplink.primary.interface"
    assert str(path) in str(info.value) and "network.uplink.primary.interface" in str(info.value)


def test_link_manager_reads_its_section_even_when_the_relays_is_broken(tmp_path: Path) -> None:
    from netconfig.netd import load as load_network

    path = write(tmp_path, EXAMPLE.read_text().replace("k: 12", "k: yes"))
    with pytest.raises(ConfigError):
        load_config(path)
    assert load_network(str(path)).uplink is not None
