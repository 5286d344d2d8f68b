"""Invalid-quality counting on measured values, checked against ASDUs that scapy's
IEC 104 layer builds (an encoder independent of ours) and against hand-made edge cases."""

from __future__ import annotations

import pytest
from scapy.contrib.scada.iec104 import IEC104_I_Message_SeqIOA, IEC104_I_Message_SingleIOA
from scapy.contrib.scada.iec104 import iec104_information_objects as io

from concentrator.iec104.quality import MEASURED_VALUE_LAYOUT, MEASURED_VALUE_TYPES, MalformedMeasurement, count_invalid

# type id -> scapy's information object class (its _IOA variant carries its own address)
SCAPY_TYPES = {
    9: "M_ME_NA_1", 10: "M_ME_TA_1", 11: "M_ME_NB_1", 12: "M_ME_TB_1", 13: "M_ME_NC_1",
    14: "M_ME_TC_1", 34: "M_ME_TD_1", 35: "M_ME_TE_1", 36: "M_ME_TF_1",
}  # fmt: skip
INVALID = [1, 0, 1, 1, 0, 0, 1]  # IV of each object: 4 of 7


def scapy_asdu(type_id: int, sequence: bool, invalid: list[int], other_flags: bool = False) -> bytes:
    name = SCAPY_TYPES[type_id]
    # The other QDS flags set as well, so only IV may be what we count.
    flags = {"nt": 1, "sb": 1, "bl": 1, "ov": 1} if other_flags else {}
    apdu: IEC104_I_Message_SeqIOA | IEC104_I_Message_SingleIOA
    if sequence:  # SQ = 1: one address, then the elements
        cls = getattr(io, f"IEC104_IO_{name}")
        objects = [cls(iv=iv, **flags) for iv in invalid]
        apdu = IEC104_I_Message_SeqIOA(type_id=type_id, cot=3, common_asdu_address=101,
                                       information_object_address=1001, io=objects)  # fmt: skip
    else:
        cls = getattr(io, f"IEC104_IO_{name}_IOA")
        objects = [cls(information_object_address=1001 + n, iv=iv, **flags) for n, iv in enumerate(invalid)]
        apdu = IEC104_I_Message_SingleIOA(type_id=type_id, cot=3, common_asdu_address=101, io=objects)
    return bytes(apdu)[6:]  # the ASDU, without the APCI


@pytest.mark.parametrize("type_id", sorted(MEASURED_VALUE_TYPES))
@pytest.mark.parametrize("sequence", [False, True], ids=["SQ=0", "SQ=1"])
@pytest.mark.parametrize("other_flags", [False, True], ids=["IV only", "all QDS flags"])
def test_counts_the_invalid_bit_of_every_object(type_id: int, sequence: bool, other_flags: bool) -> None:
    asdu = scapy_asdu(type_id, sequence, INVALID, other_flags)
    assert asdu[0] == type_id and bool(asdu[1] & 0x80) == sequence
    assert count_invalid(asdu) == (len(INVALID), sum(INVALID))


@pytest.mark.parametrize("type_id", sorted(MEASURED_VALUE_TYPES))
def test_a_single_object_valid_or_not(type_id: int) -> None:
    assert count_invalid(scapy_asdu(type_id, False, [0], other_flags=True)) == (1, 0)
    assert count_invalid(scapy_asdu(type_id, False, [1])) == (1, 1)


def test_the_counted_types_are_the_measured_values() -> None:
    assert set(MEASURED_VALUE_LAYOUT) == {9, 10, 11, 12, 13, 14, 34, 35, 36}


def test_value_octets_that_look_invalid_are_not_counted() -> None:
    # A short float whose bytes all have bit 7 set, in a valid object: only the QDS counts.
    asdu = bytes((13, 2, 3, 0, 101, 0)) + bytes((1, 0, 0)) + b"\xff\xff\xff\xff" + b"\x00"
    asdu += bytes((2, 0, 0)) + b"\x80\x80\x80\x80" + b"\x80"
    assert count_invalid(asdu) == (2, 1)


@pytest.mark.parametrize(
    "asdu",
    [
        bytes((36, 1, 3, 0, 101, 0)),  # header only
        bytes((36, 0, 3, 0, 101, 0)) + bytes(15),  # zero objects
        scapy_asdu(36, False, [0, 1])[:-1],  # one octet short
        scapy_asdu(36, False, [0, 1]) + b"\x00",  # one octet more
        scapy_asdu(13, True, [0, 1, 0])[:-2],
    ],
    ids=["header only", "no objects", "short", "long", "SQ=1 short"],
)
def test_a_length_that_does_not_fit_is_refused(asdu: bytes) -> None:
    with pytest.raises(MalformedMeasurement):
        count_invalid(asdu)
