"""The dossier's judge of byte identity and selectivity (concentrator/evidence/match.py),
on hand-made ASDU sequences: each rule says OK for a faithful relay and NOT OK, with the
bytes, for one that alters, misroutes, reorders, duplicates or fabricates."""

from __future__ import annotations

from concentrator.config import Config, parse_config
from concentrator.evidence.match import Hop, MatchResult, match
from concentrator.evidence.streams import Apdu
from concentrator.iec104.asdu import negative_mirror
from tests.peers.codec_peers import counter_asdu

SITE1 = ("10.1.1.1", 2404, "10.0.0.1", 40001)  # UPDC -> concentrator
DOWN1 = ("10.0.0.1", 40001, "10.1.1.1", 2404)
SITE2 = ("10.1.2.1", 2404, "10.0.0.1", 40002)
DOWN2 = ("10.0.0.1", 40002, "10.1.2.1", 2404)
UP = ("10.0.0.1", 2404, "10.0.1.1", 50000)  # concentrator -> BMI
BMI = ("10.0.1.1", 50000, "10.0.0.1", 2404)
HOPS = {
    SITE1: Hop("site", "s1"),
    DOWN1: Hop("down", "s1"),
    SITE2: Hop("site", "s2"),
    DOWN2: Hop("down", "s2"),
    UP: Hop("up", None),
    BMI: Hop("bmi", None),
    ("10.0.0.1", 2404, "10.0.1.1", 50001): Hop("up", None),
}


def config() -> Config:
    return parse_config(
        {
            "uplink": {"listen": "10.0.0.1:2404", "allowed_peers": ["10.0.1.1"]},
            "sites": [
                {
                    "name": "s1",
                    "common_addresses": [101],
                    "endpoints": ["10.1.1.1:2404"],
                    "interruptibility": "instantaneous",
                },
                {
                    "name": "s2",
                    "common_addresses": [102],
                    "endpoints": ["10.1.2.1:2404"],
                    "interruptibility": "emergency",
                },
            ],
        },
        "test.yaml",
    )


def interrogation(ca: int) -> bytes:
    return bytes((100, 1, 6, 0)) + ca.to_bytes(2, "little") + bytes((0, 0, 0, 20))


def run(events: list[tuple[float, tuple[str, int, str, int], bytes]], conn: int = 1) -> MatchResult:
    apdus = [Apdu(t, flow, conn if flow[3] != 50001 else 2, asdu) for t, flow, asdu in events]
    return match(config(), apdus, HOPS, started=0.0, ended=20.0, grace=2.0)


def healthy() -> list[tuple[float, tuple[str, int, str, int], bytes]]:
    a = [counter_asdu(101, n) for n in range(3)]
    b = [counter_asdu(102, n) for n in range(2)]
    return [
        (5.0, SITE1, a[0]),
        (5.001, UP, a[0]),
        (5.01, SITE2, b[0]),
        (5.02, SITE1, a[1]),
        (5.03, UP, b[0]),
        (5.04, UP, a[1]),
        (5.05, SITE1, a[2]),
        (5.06, SITE2, b[1]),
        (5.07, UP, a[2]),
        (5.08, UP, b[1]),
        (6.0, BMI, interrogation(101)),
        (6.001, DOWN1, interrogation(101)),
        (7.0, BMI, interrogation(65535)),
        (7.001, DOWN1, interrogation(65535)),
        (7.002, DOWN2, interrogation(65535)),
        (8.0, BMI, interrogation(999)),
        (8.001, UP, negative_mirror(interrogation(999))),
    ]


def test_a_faithful_relay_has_no_exception_and_every_count_adds_up() -> None:
    r = run(healthy())
    assert r.exceptions == []
    assert (r.up, r.bmi, r.bmi_broadcast, r.bmi_unknown_ca, r.negative_answers) == (6, 3, 1, 1, 1)
    assert (r.sites["s1"].forwarded, r.sites["s2"].forwarded) == (3, 2)
    assert (r.sites["s1"].commands_delivered, r.sites["s2"].commands_delivered) == (2, 1)


def test_one_altered_octet_is_shown_with_the_asdu_it_should_have_been() -> None:
    events = healthy()
    t, flow, asdu = events[5]
    assert flow == UP
    altered = asdu[:10] + bytes((asdu[10] ^ 0x80,)) + asdu[11:]
    events[5] = (t, flow, altered)
    r = run(events)
    [e] = r.exceptions
    assert (e.rule, e.hop, e.differs_at) == ("identity", "up", [10])
    assert bytes.fromhex(e.asdu) == altered and bytes.fromhex(e.expected) == asdu


def test_a_command_routed_to_a_second_site_is_a_selectivity_exception() -> None:
    r = run([*healthy(), (6.002, DOWN2, interrogation(101))])
    [e] = r.exceptions
    assert e.rule == "selectivity" and e.hop == "down s2" and "owned by s1" in e.what
    assert bytes.fromhex(e.asdu) == interrogation(101)


def test_a_command_not_delivered_and_a_broadcast_missing_a_site_are_exceptions() -> None:
    events = [ev for ev in healthy() if ev[1] != DOWN2]
    r = run(events)
    [e] = r.exceptions
    assert e.rule == "selectivity" and "CA 65535 never reached s2" in e.what


def test_a_command_for_a_site_with_no_connection_is_counted_not_judged() -> None:
    hops = {flow: hop for flow, hop in HOPS.items() if hop.site != "s2"}
    apdus = [Apdu(5.0, BMI, 1, interrogation(102))]
    r = match(config(), apdus, hops, started=0.0, ended=20.0)
    assert r.exceptions == [] and r.sites["s2"].commands_site_unconnected == 1


def test_reordered_duplicated_and_fabricated_uplink_asdus_are_exceptions() -> None:
    a0, a1 = counter_asdu(101, 0), counter_asdu(101, 1)
    base = [(5.0, SITE1, a0), (5.01, SITE1, a1)]
    reordered = run([*base, (5.02, UP, a1), (5.03, UP, a0)])
    assert [e.what for e in reordered.exceptions] == ["forwarded out of s1's order"]
    duplicated = run([*base, (5.02, UP, a0), (5.03, UP, a1), (5.04, UP, a1)])
    assert ["duplicate" in e.what for e in duplicated.exceptions] == [True]
    fabricated = run([*base, (5.02, UP, a0), (5.03, UP, a1), (5.04, UP, counter_asdu(101, 7))])
    assert [e.rule for e in fabricated.exceptions] == ["identity"]
    # A cause-46 answer nobody asked for is fabricated too.
    unasked = run([*base, (5.02, UP, a0), (5.03, UP, a1), (9.0, UP, negative_mirror(interrogation(999)))])
    assert [e.rule for e in unasked.exceptions] == ["identity"]


def test_the_ed2_resend_on_a_new_uplink_connection_is_allowed_and_counted() -> None:
    a0 = counter_asdu(101, 0)
    r = run([(5.0, SITE1, a0), (5.01, UP, a0), (5.5, ("10.0.0.1", 2404, "10.0.1.1", 50001), a0)])
    assert r.exceptions == [] and r.sites["s1"].repeated_ed2 == 1


def test_capture_edges_are_counted_apart_not_judged() -> None:
    sent_before = counter_asdu(101, 0)
    late = counter_asdu(101, 1)
    r = run([(0.5, UP, sent_before), (19.5, SITE1, late), (19.0, BMI, interrogation(102))])
    assert r.exceptions == []
    assert (r.before_capture, r.sites["s1"].in_flight_at_end, r.in_flight) == (1, 1, 1)
    # The same ASDUs in the middle of the capture are faults.
    r = run([(10.0, UP, sent_before), (10.5, BMI, interrogation(102))])
    assert sorted(e.rule for e in r.exceptions) == ["identity", "selectivity"]
