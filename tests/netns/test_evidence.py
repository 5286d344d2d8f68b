"""`concentrator evidence` on an appliance in the namespace lab: the real relay, netd with
its trip path (the engine the kernel offers), UPDC stations in the site namespaces, a
BMI sending interrogations (own CAs, broadcast, an unknown CA) and trip datagrams. A
healthy appliance is all PASS; a relay patched to alter one byte or to route a command
to a second site, or a socket that joins a trip group, turns exactly the right section
to FAIL, with the bytes shown."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from netconfig.trip.config import AUTO, NFTABLES
from tests.conftest import require_root, require_tool
from tests.lab.harness import Lab, require_engine, wait_for
from tests.netns.appliance import Appliance

pytestmark = pytest.mark.netns

GROUP, PORT = "239.192.10.7", 30107


def recheck(out: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concentrator", "evidence", "--recheck", out],
        capture_output=True,
        text=True,
        timeout=120,
    )


def verdicts(doc: dict[str, Any]) -> dict[int, str]:
    return {s["number"]: s["verdict"] for s in doc["sections"]}


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    require_engine(AUTO)
    # Probes lenient enough that a loaded test machine does not fake a silent failure
    # (the live switches of --lab are carrier losses).
    with Lab(n_sites=2, hold_time=1.0, probe_interval=0.2, probe_misses=5, trip_groups=[(GROUP, PORT)]) as lab:
        yield lab


def test_healthy_appliance_is_all_pass_with_the_lab_proofs(lab: Lab) -> None:
    app = Appliance(lab, GROUP, PORT)
    app.start()
    code, doc, text = app.evidence("--lab", duration=6.0)
    assert verdicts(doc) == {1: "PASS", 2: "PASS", 3: "PASS", 4: "PASS"}, text
    assert code == 0
    spec, ident, trips, fail = (s["facts"] for s in doc["sections"])
    assert spec["relay_reports_sha256"] == spec["sha256"] and spec["history"][-1]["command"] == "relay"
    m = ident["match"]
    assert m["up"] > 100 and not m["exceptions"]
    assert m["bmi_broadcast"] > 0 and m["bmi_unknown_ca"] > 0 and m["negative_answers"] > 0
    for counts in m["sites"].values():
        assert counts["forwarded"] > 50 and counts["commands_delivered"] > 5
    # The relay was stopped and trips still went through the kernel.
    assert trips["relay_stopped"]["relay_states"] and set(trips["relay_stopped"]["relay_states"].values()) == {"T"}
    assert sum(trips["relay_stopped"]["forwarded_while_stopped"].values()) > 0
    # Section 3 names the engine the kernel offers and shows that engine's own rules and
    # counters: nftables' dup rules to each site's path in use, or the routing table's.
    engine = trips["engine"]
    assert engine["choice"]["engine"] == require_engine(AUTO) and engine["choice"]["asked"] == AUTO
    if engine["choice"]["engine"] == NFTABLES:
        for site in ("s1p", "s2p"):
            assert f'dup to "{site}" comment "out"' in engine["rules"], engine["rules"]
        assert 'jump sg0 comment "10.0.1.1 239.192.10.7 in"' in engine["rules"]
    else:
        assert "Group    Origin" in engine["rules"] and "s1p" in engine["rules"], engine["rules"]
    [row] = trips["paths"]
    assert row["installed"] and row["packets_during_capture"] > 0 and row["wrong_if_during_capture"] == 0, row
    [group] = trips["forwarded"]["groups"].values()
    assert group["in"] > 0 and group["not_forwarded"] == 0 and set(group["copies"]) == {"s1p", "s2p"}
    delay = trips["forwarded"]["delay"]
    assert delay["multicast"]["count"] > 0 and delay["unicast"]["count"] > 0
    assert trips["forwarded"]["added_median_us"] is not None
    # Every protected link switched live, each outage measured by netd.
    live = {row["link"]: row for row in fail["live"]}
    assert set(live) == {"uplink", "site1", "site2"}
    assert all(
        0 < row["seen_after_seconds"] < 20
        and row["outage_seconds"] is not None
        and row["switch"]["reason"] == "carrier-down"
        for row in live.values()
    ), live
    # The data plane's outage, from echo replies every 10 ms: far below 20 s.
    assert all(0 < row["echo_outage_seconds"] < 5 for row in live.values()), live
    # tshark, an independent decoder, reads the uplink's pcap and finds the ASDUs we counted.
    tshark = require_tool("tshark", "tshark")
    rows = subprocess.run(
        [
            tshark,
            "-r",
            os.path.join(lab.workdir, "dossier", "capture", "up0.pcap"),
            "-d",
            "tcp.port==2404,iec60870_104",
            "-Y",
            "tcp.srcport == 2404 && iec60870_asdu",
            "-T",
            "fields",
            "-e",
            "iec60870_asdu.addr",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=;",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sum(len(row.split(";")) for row in rows) == m["up"]
    # The engineer's re-check from the files alone gives the same matching; one octet of
    # an uplink ASDU changed in the pcap, and it does not.
    out = os.path.join(lab.workdir, "dossier")
    again = recheck(out)
    assert again.returncode == 0 and "PASS" in again.stdout and "the same as matches.json" in again.stdout
    pcap = os.path.join(out, "capture", "up0.pcap")
    data = bytearray(open(pcap, "rb").read())
    # An M_IT_NA_1 of CA 101 from the middle of the capture (the first seconds' are edges):
    # flip a bit of its counter.
    header = bytes.fromhex("0f 01 03 00 65 00 59 1b 00")
    places = [i for i in range(len(data)) if data.startswith(header, i)]
    data[places[len(places) // 2] + len(header)] ^= 0x01
    open(pcap, "wb").write(data)
    again = recheck(out)
    assert again.returncode == 1 and "FAIL" in again.stdout and "DIFFERENT from matches.json" in again.stdout
    html = open(os.path.join(lab.workdir, "dossier", "index.html")).read()
    assert html.count('class="PASS"') >= 5 and 'class="FAIL"' not in html and "<svg" in html


def test_a_relay_that_alters_one_byte_fails_section_2_with_the_bytes(lab: Lab) -> None:
    app = Appliance(lab, GROUP, PORT, patch="alter")
    app.start()
    code, doc, text = app.evidence()
    assert code == 1
    assert verdicts(doc) == {1: "PASS", 2: "FAIL", 3: "PASS", 4: "PASS"}, text
    exceptions = doc["sections"][1]["facts"]["match"]["exceptions"]
    assert exceptions and all(e["rule"] == "identity" for e in exceptions)
    for e in exceptions:
        got, want = bytes.fromhex(e["asdu"]), bytes.fromhex(e["expected"])
        assert e["differs_at"] == [len(got) - 1] and got[-1] ^ want[-1] == 0x01 and got[:-1] == want[:-1]
    html = open(os.path.join(lab.workdir, "dossier", "index.html")).read()
    assert f'<span class="diff">{want[-1]:02x}</span>' in html


def test_a_relay_that_routes_a_command_to_a_second_site_fails_section_2(lab: Lab) -> None:
    app = Appliance(lab, GROUP, PORT, patch="misroute")
    app.start()
    code, doc, text = app.evidence()
    assert code == 1
    assert verdicts(doc) == {1: "PASS", 2: "FAIL", 3: "PASS", 4: "PASS"}, text
    exceptions = doc["sections"][1]["facts"]["match"]["exceptions"]
    assert exceptions and all(e["rule"] == "selectivity" and e["hop"] == "down site2" for e in exceptions)
    for e in exceptions:
        asdu = bytes.fromhex(e["asdu"])
        assert asdu[4] | asdu[5] << 8 == 101 and "owned by site1" in e["what"]


def test_a_socket_that_joins_a_trip_group_fails_section_3(lab: Lab) -> None:
    app = Appliance(lab, GROUP, PORT)
    app.start()
    joiner = lab.spawn("conc", "joiner", [sys.executable, "-c", JOIN, GROUP, "up0"])
    wait_for(lambda: lab.assert_running() or "joined" in lab._log_tail("joiner")(), 10, "socket joined")
    code, doc, text = app.evidence()
    lab.stop(joiner)
    assert code == 1
    assert verdicts(doc) == {1: "PASS", 2: "PASS", 3: "FAIL", 4: "PASS"}, text
    findings = doc["sections"][2]["findings"]
    assert any(f"group {GROUP}: a socket on this host is a member" in f and "up0" in f for f in findings), findings


JOIN = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("=4s4si", socket.inet_aton(sys.argv[1]), socket.inet_aton("0.0.0.0"),
                         socket.if_nametoindex(sys.argv[2])))
print("joined", flush=True)
time.sleep(3600)
"""
