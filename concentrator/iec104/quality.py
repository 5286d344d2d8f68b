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

from .asdu import HEADER_LENGTH
from .decode import IOA_LENGTH, TYPES, VALUE_LENGTH, ValueKind

# type id -> (element length without IOA, offset of the QDS in the element), derived
# from the decoder's tables: the value and its QDS, then the time tag if any. Kept as
# a flat table because it is read for every measured value the relay forwards.
MEASURED_VALUE_LAYOUT: dict[int, tuple[int, int]] = {
    type_id: (VALUE_LENGTH[kind] + time.value, VALUE_LENGTH[kind] - 1)
    for type_id, (_, kind, time) in TYPES.items()
    if kind in (ValueKind.NORMALISED, ValueKind.SCALED, ValueKind.FLOAT)
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
