"""The read-only ASDU decoder, on frames built from the standard's layouts and on frames
captured from c104 (lib60870) peers, each cross-checked against scapy's independent
IEC 104 decoder (scapy.contrib.scada.iec104) reading the same bytes."""

from __future__ import annotations

import datetime
import math
import struct

import pytest
from scapy.contrib.scada.iec104 import IEC104_I_Message_SeqIOA, IEC104_I_Message_SingleIOA

from concentrator.iec104.decode import TYPES, DecodeError, ValueKind, decode_asdu

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
        else:
            assert obj.value == ref["coi"]
        if obj.quality is not None:
            assert obj.quality.iv == bool(ref["iv"])
            for bit in ("nt", "sb", "bl", "ov"):
                assert getattr(obj.quality, bit) == bool(ref.get(bit, 0)), bit
        if obj.time is not None:
            assert (obj.time.milliseconds, obj.time.minute, obj.time.invalid) == (
                ref["sec_milli"], ref["minutes"], bool(ref["iv_time"]),
            )  # fmt: skip
            if "year" in ref:
                assert (obj.time.hour, obj.time.day, obj.time.month, obj.time.year) == (
                    ref["hours"], ref["day_of_month"], ref["month"], 2000 + ref["year"],
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
    assert double.value == 2 and double.quality is not None and double.quality.nt and double.quality.raw == 0x42


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
        bytes.fromhex("2d0106006500d10b0001"),  # C_SC_NA_1: control direction, not decoded here
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
