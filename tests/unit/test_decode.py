"""The read-only ASDU decoder, on frames built from the standard's layouts and on frames
captured from c104 (lib60870) peers, each cross-checked against scapy's independent
IEC 104 decoder (scapy.contrib.scada.iec104) reading the same bytes."""

from __future__ import annotations

import datetime
import math
import struct
import zoneinfo

import pytest
from scapy.contrib.scada.iec104 import IEC104_I_Message_SeqIOA, IEC104_I_Message_SingleIOA

from concentrator.iec104.decode import CYCLIC_TYPES, TYPES, DecodeError, ValueKind, decode_asdu

# Captured from the UPDC simulator (c104 2.2.1 server) talking to a c104 client, Nov 2026:
# interrogation answer (cause 20) with SQ = 1, spontaneous samples and changes (cause 3).
C104_CAPTURES = {
    "lock, interrogated, SQ=1": "1e8114006500d20700000bc40604160b1a",
    "breaker ON, interrogated, SQ=1": "1f8114006500d10700020bc40604160b1a",
    "3 powers, interrogated, SQ=1": "248314006500e90300245a2f4500f9c70604160b1a"
    "eeb78a4400f9c70604160b1a615f944400f9c70604160b1a",
    "3 powers, spontaneous": "248303006500e903003e1a2e4500c1c80604160b1a"
    "36b58b4400c1c80604160b1afc2e934400c1c80604160b1a",
    "breaker OFF, spontaneous": "1f0103006500d10700015fca0604160b1a",
    "lock ON, spontaneous": "1e0103006500d20700015fca0604160b1a",
}

# CP56Time2a of 2026-11-22 04:06:50.187 UTC (c104 capture above): ms, min, hour, day, month, year.
CP56 = bytes.fromhex("0bc40604160b1a")
CP24 = bytes.fromhex("0bc486")  # same ms and minute, IV bit of the time tag set


def cp56(year: int, month: int, day: int, hour: int, minute: int, ms: int, *, summer: bool) -> bytes:
    return bytes((ms & 0xFF, ms >> 8, minute, hour | (0x80 if summer else 0), day, month, year - 2000))


# 02:30 local on 25 October 2026, the hour Italy repeats when summer time ends: first in
# summer time (SU set, UTC+2), then in winter time (UTC+1).
REPEATED_SUMMER = cp56(2026, 10, 25, 2, 30, 0, summer=True)
REPEATED_WINTER = cp56(2026, 10, 25, 2, 30, 0, summer=False)


def asdu(
    type_id: int, elements: list[bytes], *, ioa: int = 1001, sq: bool = False, cot: int = 3, ca: int = 101
) -> bytes:
    head = bytes((type_id, (0x80 if sq else 0) | len(elements), cot, 0)) + ca.to_bytes(2, "little")
    if sq:
        return head + ioa.to_bytes(3, "little") + b"".join(elements)
    return head + b"".join((ioa + i).to_bytes(3, "little") + e for i, e in enumerate(elements))


# One frame per type the decoder knows, following the element layouts of IEC 60870-5-101
# section 7.3.1 (values chosen to set the interesting bits).
BUILT = {
    "M_SP_NA_1 on, blocked": asdu(1, [b"\x11"]),
    "M_SP_TA_1 off, invalid": asdu(2, [b"\x80" + CP24]),
    "M_DP_NA_1 ON, not topical": asdu(3, [b"\x42"]),
    "M_DP_TA_1 OFF": asdu(4, [b"\x01" + CP24]),
    "M_ST_NA_1 -3 transient": asdu(5, [b"\xfd\x00"]),
    "M_ST_TA_1 +5": asdu(6, [b"\x05\x20" + CP24]),
    "M_BO_NA_1": asdu(7, [b"\x78\x56\x34\x12\x00"]),
    "M_BO_TA_1": asdu(8, [b"\x01\x00\x00\x80\x10" + CP24]),
    "M_ME_NA_1 -0.5, overflow": asdu(9, [struct.pack("<h", -16384) + b"\x01"]),
    "M_ME_TA_1": asdu(10, [struct.pack("<h", 16384) + b"\x00" + CP24]),
    "M_ME_NB_1 SQ=1": asdu(11, [struct.pack("<h", -1234) + b"\x00", struct.pack("<h", 77) + b"\x20"], sq=True),
    "M_ME_TB_1": asdu(12, [struct.pack("<h", 32767) + b"\x80" + CP24]),
    "M_ME_NC_1 periodic": asdu(13, [struct.pack("<f", -42.25) + b"\x00"], cot=1),
    "M_ME_TC_1": asdu(14, [struct.pack("<f", 1.5) + b"\x40" + CP24]),
    "M_IT_NA_1 carry": asdu(15, [struct.pack("<i", -7) + b"\x25"], cot=37),
    "M_IT_TA_1": asdu(16, [struct.pack("<i", 100000) + b"\xc1" + CP24], cot=37),
    "M_ME_ND_1": asdu(21, [struct.pack("<h", 8192)]),
    "M_SP_TB_1": asdu(30, [b"\x01" + CP56]),
    "M_SP_TB_1 summer time": asdu(30, [b"\x01" + REPEATED_SUMMER]),
    "M_DP_TB_1 ON": asdu(31, [b"\x02" + CP56]),
    "M_ST_TB_1": asdu(32, [b"\x3f\x00" + CP56]),
    "M_BO_TB_1": asdu(33, [b"\xff\xff\xff\xff\x00" + CP56]),
    "M_ME_TD_1": asdu(34, [struct.pack("<h", -32768) + b"\x00" + CP56]),
    "M_ME_TE_1": asdu(35, [struct.pack("<h", 500) + b"\x10" + CP56]),
    "M_ME_TF_1 two objects": asdu(
        36, [struct.pack("<f", 1234.5) + b"\x00" + CP56, struct.pack("<f", 0.0) + b"\x80" + CP56]
    ),
    "M_IT_TB_1": asdu(37, [struct.pack("<i", 2**31 - 1) + b"\x00" + CP56], cot=37),
    "M_EI_NA_1 after local power on": asdu(70, [b"\x00"], ioa=0, cot=4),
    # Protection equipment: event ON with EI and NT set, 300 ms elapsed; start events
    # (general, L1, earth) in 45 ms, blocked; output circuits (general, L2) in 120 ms.
    "M_EP_TD_1 ON, elapsed time invalid": asdu(38, [b"\x4a" + (300).to_bytes(2, "little") + CP56]),
    "M_EP_TE_1 starts": asdu(39, [b"\x13\x10" + (45).to_bytes(2, "little") + CP56]),
    "M_EP_TF_1 trips": asdu(40, [b"\x05\x00" + (120).to_bytes(2, "little") + CP56]),
    # Command confirmations (cause 7) and terminations (10), as a site sends them back.
    "C_SC_NA_1 select ON, confirmed": asdu(45, [b"\x81"], cot=7),
    "C_DC_NA_1 execute ON, long pulse": asdu(46, [b"\x0a"], cot=10),
    "C_RC_NA_1 higher": asdu(47, [b"\x02"], cot=7),
    "C_SE_NA_1 0.25": asdu(48, [struct.pack("<h", 8192) + b"\x00"], cot=7),
    "C_SE_NB_1 -300, select": asdu(49, [struct.pack("<h", -300) + b"\x80"], cot=7),
    "C_SE_NC_1 49.5": asdu(50, [struct.pack("<f", 49.5) + b"\x00"], cot=7),
    "C_BO_NA_1": asdu(51, [b"\x01\x02\x03\x04"], cot=7),
    "C_SC_TA_1 OFF": asdu(58, [b"\x00" + CP56], cot=7),
    "C_DC_TA_1 ON, negative": asdu(59, [b"\x02" + CP56], cot=0x47),
    "C_RC_TA_1 lower": asdu(60, [b"\x01" + CP56], cot=10),
    "C_SE_TA_1": asdu(61, [struct.pack("<h", -16384) + b"\x00" + CP56], cot=7),
    "C_SE_TB_1": asdu(62, [struct.pack("<h", 1000) + b"\x00" + CP56], cot=7),
    "C_SE_TC_1": asdu(63, [struct.pack("<f", -1.25) + b"\x00" + CP56], cot=7),
    "C_BO_TA_1": asdu(64, [b"\xff\x00\x00\x00" + CP56], cot=7),
    "C_IC_NA_1 station, confirmed": asdu(100, [b"\x14"], ioa=0, cot=7),
    "C_CI_NA_1 general, freeze": asdu(101, [b"\x45"], ioa=0, cot=7),
    "C_RD_NA_1": asdu(102, [b""], cot=5),
    "C_CS_NA_1 confirmed": asdu(103, [CP56], ioa=0, cot=7),
    "C_RP_NA_1 general reset": asdu(105, [b"\x01"], ioa=0, cot=7),
    "C_TS_TA_1": asdu(107, [b"\x34\x12" + CP56], ioa=0, cot=7),
}

ALL_FRAMES = {**{k: bytes.fromhex(v) for k, v in C104_CAPTURES.items()}, **BUILT}


def scapy_objects(frame: bytes) -> list[dict[str, object]]:
    apdu = bytes((0x68, 4 + len(frame), 0, 0, 0, 0)) + frame
    message = IEC104_I_Message_SeqIOA(apdu) if frame[1] & 0x80 else IEC104_I_Message_SingleIOA(apdu)
    assert message.type_id == frame[0] and message.common_asdu_address == frame[4] | frame[5] << 8
    objects = [dict(io.fields) for io in message.io]
    if frame[1] & 0x80:  # scapy keeps a sequence's one IOA on the message
        objects[0]["information_object_address"] = message.information_object_address
    return objects


@pytest.mark.parametrize("name", list(ALL_FRAMES))
def test_decoder_agrees_with_scapy(name: str):
    frame = ALL_FRAMES[name]
    decoded = decode_asdu(frame)
    theirs = scapy_objects(frame)
    assert len(decoded.objects) == len(theirs) == frame[1] & 0x7F
    first_ioa = theirs[0]["information_object_address"]
    for i, (obj, ref) in enumerate(zip(decoded.objects, theirs, strict=True)):
        # scapy reads the IOA only once in a sequence; the others follow it.
        assert obj.address == (first_ioa + i if frame[1] & 0x80 else ref["information_object_address"])
        kind = decoded.kind
        if kind is ValueKind.SINGLE:
            assert obj.value == bool(ref["spi_value"])
        elif kind is ValueKind.DOUBLE:
            assert obj.value == ref["dpi_value"]
        elif kind is ValueKind.STEP:
            assert obj.value == ref["value"] and obj.extra == {"transient": bool(ref["transient_state"])}
        elif kind is ValueKind.BITSTRING:
            # Octet order: scapy reads BSI big-endian; lib60870 and Wireshark read the
            # 32 bits little-endian like every other multi-octet field (101, 7.2.6.13).
            assert obj.value == int.from_bytes(ref["bsi"].to_bytes(4, "big"), "little")
        elif kind in (ValueKind.NORMALISED, ValueKind.NORMALISED_NO_QUALITY):
            assert obj.value == ref["normed_value"] / 32768  # scapy gives the raw signed integer
        elif kind is ValueKind.SCALED:
            assert obj.value == ref["scaled_value"]
        elif kind is ValueKind.FLOAT:
            assert math.isclose(obj.value, ref["scaled_value"], rel_tol=1e-7)
        elif kind is ValueKind.COUNTER:
            assert obj.value == ref["counter_value"]
            assert obj.extra == {"sequence": ref["sq"], "carry": bool(ref["cy"]), "adjusted": bool(ref["ca"])}
        elif kind is ValueKind.PROTECTION_EVENT:
            assert obj.value == ref["es"] and obj.extra == {"elapsed_ms": ref["elapsed_sec_milli"]}
            assert obj.quality is not None and obj.quality.ei == bool(ref["ei"])
        elif kind is ValueKind.PROTECTION_START:
            assert obj.extra is not None and obj.extra["duration_ms"] == ref["prot_act_sec_milli"]
            for ours, theirs in (("general_start", "gs"), ("start_l1", "sl1"), ("start_l2", "sl2"),
                                 ("start_l3", "sl3"), ("start_earth", "sie"), ("start_reverse", "srd")):  # fmt: skip
                assert obj.extra[ours] == bool(ref[theirs]), ours
        elif kind is ValueKind.PROTECTION_OUTPUT:
            assert obj.extra is not None and obj.extra["operating_ms"] == ref["prot_cmd_sec_milli"]
            for ours, theirs in (("general_command", "gc"), ("command_l1", "cl1"), ("command_l2", "cl2"),
                                 ("command_l3", "cl3")):  # fmt: skip
                assert obj.extra[ours] == bool(ref[theirs]), ours
        elif kind in (ValueKind.SINGLE_COMMAND, ValueKind.DOUBLE_COMMAND, ValueKind.STEP_COMMAND):
            state = {ValueKind.SINGLE_COMMAND: "scs", ValueKind.DOUBLE_COMMAND: "dcs"}.get(kind, "rcs")
            assert obj.value == ref[state] and obj.extra == {"select": bool(ref["s_or_e"]), "qualifier": ref["qu"]}
        elif kind in (ValueKind.SETPOINT_NORMALISED, ValueKind.SETPOINT_SCALED, ValueKind.SETPOINT_FLOAT):
            if kind is ValueKind.SETPOINT_NORMALISED:
                assert obj.value == ref["normed_value"] / 32768
            else:
                assert math.isclose(obj.value, ref["scaled_value"], rel_tol=1e-7)
            assert obj.extra == {"select": bool(ref["action"]), "qualifier": ref["ql"]}
        elif kind is ValueKind.BITSTRING_COMMAND:
            assert obj.value == int.from_bytes(ref["bsi"].to_bytes(4, "big"), "little")
        elif kind is ValueKind.INTERROGATION:
            assert obj.value == ref["qoi"]
        elif kind is ValueKind.COUNTER_INTERROGATION:
            assert obj.value == ref["rqt"] and obj.extra == {"freeze": ref["frz"]}
        elif kind is ValueKind.RESET_PROCESS:
            assert obj.value == ref["qrp"]
        elif kind is ValueKind.TEST_COMMAND:
            assert obj.value == ref["tsc"]
        elif kind in (ValueKind.READ, ValueKind.CLOCK_SYNC):
            assert obj.value is None
        else:
            assert obj.value == ref["coi"]
        if kind.name.endswith("COMMAND") or kind.name.startswith(("SETPOINT", "READ", "CLOCK", "RESET", "INTERRO",
                                                                   "COUNTER_INT")):  # fmt: skip
            assert obj.quality is None  # commands carry no quality descriptor
        if obj.quality is not None:
            assert obj.quality.iv == bool(ref["iv"])
            for bit in ("nt", "sb", "bl", "ov", "ei"):
                assert getattr(obj.quality, bit) == bool(ref.get(bit, 0)), bit
        if obj.time is not None:
            assert (obj.time.milliseconds, obj.time.minute, obj.time.invalid) == (
                ref["sec_milli"], ref["minutes"], bool(ref["iv_time"]),
            )  # fmt: skip
            if "year" in ref:
                assert (obj.time.hour, obj.time.day, obj.time.month, obj.time.year, obj.time.summer) == (
                    ref["hours"], ref["day_of_month"], ref["month"], 2000 + ref["year"], bool(ref["su"]),
                )  # fmt: skip


def test_c104_measurement_frame_in_full():
    decoded = decode_asdu(bytes.fromhex(C104_CAPTURES["3 powers, spontaneous"]))
    assert decoded.type_name == "M_ME_TF_1" and decoded.header.cause == 3 and decoded.header.common_address == 101
    assert [o.address for o in decoded.objects] == [1001, 1002, 1003]
    assert all(o.quality is not None and o.quality.raw == 0 and not o.quality.iv for o in decoded.objects)
    tag = decoded.objects[0].time
    assert tag is not None and not tag.invalid
    assert tag.datetime() == datetime.datetime(2026, 11, 22, 4, 6, 51, 393000, tzinfo=datetime.UTC)
    assert tag.isoformat() == "2026-11-22T04:06:51.393Z"


def test_quality_bits_and_raw_octet():
    obj = decode_asdu(BUILT["M_ME_NA_1 -0.5, overflow"]).objects[0]
    assert obj.value == -0.5 and obj.quality is not None and obj.quality.ov and obj.quality.raw == 0x01
    single = decode_asdu(BUILT["M_SP_NA_1 on, blocked"]).objects[0]
    assert single.value is True and single.quality is not None
    assert single.quality.bl and not single.quality.ov  # bit 0 of a SIQ is the value, not OV
    double = decode_asdu(BUILT["M_DP_NA_1 ON, not topical"]).objects[0]
    # raw holds the quality bits only: a closed breaker (DPI 2) of good quality reads 0.
    assert double.value == 2 and double.quality is not None and double.quality.nt and double.quality.raw == 0x40
    closed = decode_asdu(BUILT["M_DP_TB_1 ON"]).objects[0]
    assert closed.value == 2 and closed.quality is not None and closed.quality.raw == 0
    counter = decode_asdu(BUILT["M_IT_TA_1"]).objects[0]  # octet 0xc1: IV, CA, sequence 1
    assert counter.quality is not None and counter.quality.raw == 0x80 and counter.quality.iv
    assert counter.extra == {"sequence": 1, "carry": False, "adjusted": True}
    event = decode_asdu(BUILT["M_EP_TD_1 ON, elapsed time invalid"]).objects[0]  # SEP 0x4a: NT, EI, ON
    assert event.value == 2 and event.quality is not None and event.quality.raw == 0x48
    assert event.quality.ei and event.quality.nt and not event.quality.iv


def test_time_tag_invalid_bit_and_cp24_has_no_date():
    obj = decode_asdu(BUILT["M_SP_TA_1 off, invalid"]).objects[0]
    assert obj.time is not None and obj.time.invalid and obj.time.isoformat() is None
    assert obj.quality is not None and obj.quality.iv and obj.value is False


def test_step_position_is_signed():
    obj = decode_asdu(BUILT["M_ST_NA_1 -3 transient"]).objects[0]
    assert obj.value == -3 and obj.extra == {"transient": True}


def test_sequence_addresses_follow_the_first():
    decoded = decode_asdu(BUILT["M_ME_NB_1 SQ=1"])
    assert [(o.address, o.value) for o in decoded.objects] == [(1001, -1234), (1002, 77)]


def test_end_of_initialisation():
    obj = decode_asdu(BUILT["M_EI_NA_1 after local power on"]).objects[0]
    assert obj.address == 0 and obj.value == 0 and obj.quality is None and obj.time is None


@pytest.mark.parametrize(
    "frame",
    [
        bytes((110, 1, 6, 0, 101, 0, 1, 0, 0, 0, 0, 0)),  # P_ME_NA_1: a parameter, not decoded here
        bytes.fromhex("2d0106006500d10b000100"),  # C_SC_NA_1 one octet too many
        BUILT["M_ME_TF_1 two objects"][:-1],  # one octet short
        BUILT["M_ME_TF_1 two objects"] + b"\x00",  # one octet too many
        bytes((36, 0, 3, 0, 101, 0)),  # no objects
        b"\x24\x01",  # shorter than the header
    ],
)
def test_malformed_or_unknown_is_an_error(frame: bytes):
    with pytest.raises(DecodeError if len(frame) >= 6 else ValueError):
        decode_asdu(frame)


def test_every_type_is_in_the_built_frames():
    assert {f[0] for f in BUILT.values()} == set(TYPES)


def test_summer_time_bit_picks_the_hour_that_repeats():
    rome = zoneinfo.ZoneInfo("Europe/Rome")
    summer = decode_asdu(BUILT["M_SP_TB_1 summer time"]).objects[0].time
    winter = decode_asdu(asdu(30, [b"\x01" + REPEATED_WINTER])).objects[0].time
    assert summer is not None and winter is not None and summer.summer and not winter.summer
    assert summer.isoformat(rome) == "2026-10-25T02:30:00.000+02:00"
    assert winter.isoformat(rome) == "2026-10-25T02:30:00.000+01:00"
    assert summer.datetime(rome).astimezone(datetime.UTC) == datetime.datetime(2026, 10, 25, 0, 30, tzinfo=datetime.UTC)
    assert winter.datetime(rome).astimezone(datetime.UTC) == datetime.datetime(2026, 10, 25, 1, 30, tzinfo=datetime.UTC)
    # Outside that hour the zone alone decides; a site on UTC (the default) stays UTC.
    july = decode_asdu(asdu(30, [b"\x01" + cp56(2026, 7, 1, 12, 0, 0, summer=True)])).objects[0].time
    assert july is not None and july.isoformat(rome) == "2026-07-01T12:00:00.000+02:00"
    assert july.isoformat() == "2026-07-01T12:00:00.000Z"
    assert summer.raw == REPEATED_SUMMER  # the octets as sent, for the payload


def test_cp24_time_tag_is_resolved_against_the_receive_time():
    tag = decode_asdu(BUILT["M_SP_TA_1 off, invalid"]).objects[0].time  # minute 6, 50.187 s
    assert tag is not None and tag.isoformat() is None  # no date without a receive time

    def at(hour: int, minute: int, second: int) -> datetime.datetime:
        return datetime.datetime(2026, 11, 22, hour, minute, second, tzinfo=datetime.UTC)

    assert tag.isoformat(received=at(4, 7, 10)) == "2026-11-22T04:06:50.187Z"
    assert tag.isoformat(received=at(4, 6, 30)) == "2026-11-22T04:06:50.187Z"  # site clock 20 s ahead
    assert tag.isoformat(received=at(4, 5, 0)) == "2026-11-22T03:06:50.187Z"  # from the hour before
    assert tag.isoformat(received=at(0, 2, 0)) == "2026-11-21T23:06:50.187Z"  # and the day before
    rome = zoneinfo.ZoneInfo("Europe/Rome")
    assert tag.isoformat(rome, received=at(4, 7, 10)) == "2026-11-22T05:06:50.187+01:00"


def test_command_confirmations_decoded_with_their_time_tag():
    select = decode_asdu(BUILT["C_SC_NA_1 select ON, confirmed"])
    assert select.type_name == "C_SC_NA_1" and select.header.cause == 7
    [obj] = select.objects
    assert obj.value is True and obj.extra == {"select": True, "qualifier": 0} and obj.quality is None
    assert obj.time is None
    negative = decode_asdu(BUILT["C_DC_TA_1 ON, negative"])
    assert negative.header.negative and negative.objects[0].value == 2
    tag = negative.objects[0].time
    assert tag is not None and tag.isoformat() == "2026-11-22T04:06:50.187Z"
    pulse = decode_asdu(BUILT["C_DC_NA_1 execute ON, long pulse"]).objects[0]
    assert pulse.value == 2 and pulse.extra == {"select": False, "qualifier": 2}


def test_cyclic_types_are_the_measurements_and_totals_docs_mqtt_lists():
    # docs/mqtt.md: the mirror drops "types 9-16, 21, 34-37" first and publishes them at QoS 0.
    assert CYCLIC_TYPES == {*range(9, 17), 21, *range(34, 38)}
    assert not CYCLIC_TYPES & {1, 3, 7, 30, 31, 33, 45, 70, 100}  # points, bitstrings, commands: events
