"""Count measured values whose quality descriptor says "invalid", without altering them.

Annex A40 section 5.3 counts samples with invalid quality as zero for the operator, so the
holder must see them. The relay forwards ASDUs untouched; this only reads them. It knows
just enough of IEC 60870-5-101/104 to find the quality descriptor (QDS) of each object
of a measured-value ASDU; a full ASDU decoder is another module's job.

Layout (companion standard 104, 2-octet cause, 2-octet CA, 3-octet IOA):

    type id | VSQ (SQ bit 7, number of objects bits 0-6) | COT (2) | CA (2) | objects

With SQ = 0 every object is IOA + element; with SQ = 1 one IOA is followed by the
elements. The element of a measured value is its value, then the QDS, then (types 10,
12, 14, 34-36) a time tag. IV, "invalid", is bit 7 of the QDS.
"""

from __future__ import annotations

HEADER_LENGTH = 6
IOA_LENGTH = 3

# type id -> (element length without IOA, offset of the QDS in the element)
MEASURED_VALUE_LAYOUT: dict[int, tuple[int, int]] = {
    9: (3, 2),  # M_ME_NA_1 normalised value (2) + QDS
    10: (6, 2),  # M_ME_TA_1 + CP24Time2a (3)
    11: (3, 2),  # M_ME_NB_1 scaled value (2) + QDS
    12: (6, 2),  # M_ME_TB_1 + CP24Time2a
    13: (5, 4),  # M_ME_NC_1 short float (4) + QDS
    14: (8, 4),  # M_ME_TC_1 + CP24Time2a
    34: (10, 2),  # M_ME_TD_1 normalised + CP56Time2a (7)
    35: (10, 2),  # M_ME_TE_1 scaled + CP56Time2a
    36: (12, 4),  # M_ME_TF_1 short float + CP56Time2a
}
MEASURED_VALUE_TYPES = frozenset(MEASURED_VALUE_LAYOUT)

QDS_INVALID = 0x80
# bytes.translate(None, delete) drops these in C: what is left are the valid objects.
_INVALID_OCTETS = bytes(range(QDS_INVALID, 256))


class MalformedMeasurement(ValueError):
    """The ASDU's length does not match its type and number of objects."""


def count_invalid(asdu: bytes) -> tuple[int, int]:
    """(objects, objects with IV set) of a measured-value ASDU (type in MEASURED_VALUE_TYPES).

    Raises MalformedMeasurement when the length does not fit the type and VSQ exactly,
    KeyError for a type that is not a measured value. One slice and one translate, both
    in C: this runs on the relay's hot path for every measured-value ASDU.
    """
    element, qds = MEASURED_VALUE_LAYOUT[asdu[0]]
    vsq = asdu[1]
    objects = vsq & 0x7F
    if vsq & 0x80:  # SQ = 1: one IOA, then the elements back to back
        step = element
        expected = HEADER_LENGTH + IOA_LENGTH + objects * element
    else:
        step = IOA_LENGTH + element
        expected = HEADER_LENGTH + objects * step
    if objects == 0 or len(asdu) != expected:
        raise MalformedMeasurement(f"type {asdu[0]} with VSQ {vsq:#04x} has {len(asdu)} octets, expected {expected}")
    # The first QDS follows the first IOA in both forms; the others are `step` apart.
    octets = asdu[HEADER_LENGTH + IOA_LENGTH + qds :: step]
    return objects, objects - len(octets.translate(None, _INVALID_OCTETS))
