"""Read-only decoder of monitor-direction ASDUs (IEC 60870-5-101/104, companion 104 profile).

It reads copies: the relay forwards the original bytes and never re-encodes anything.
Used off the relay's hot path (the MQTT mirror decodes in its own task), so clarity
matters more here than speed.

Element layouts (octets after the 3-octet IOA):

    1  M_SP_NA_1  SIQ                      30 M_SP_TB_1  SIQ + CP56Time2a
    3  M_DP_NA_1  DIQ                      31 M_DP_TB_1  DIQ + CP56Time2a
    5  M_ST_NA_1  VTI + QDS                32 M_ST_TB_1  VTI + QDS + CP56Time2a
    7  M_BO_NA_1  BSI(4) + QDS             33 M_BO_TB_1  BSI + QDS + CP56Time2a
    9  M_ME_NA_1  NVA(2) + QDS             34 M_ME_TD_1  NVA + QDS + CP56Time2a
    11 M_ME_NB_1  SVA(2) + QDS             35 M_ME_TE_1  SVA + QDS + CP56Time2a
    13 M_ME_NC_1  IEEE 754 float(4) + QDS  36 M_ME_TF_1  float + QDS + CP56Time2a
    15 M_IT_NA_1  BCR(5)                   37 M_IT_TB_1  BCR + CP56Time2a
    21 M_ME_ND_1  NVA (no quality)         70 M_EI_NA_1  COI
    2, 4, 6, 8, 10, 12, 14, 16: as the type before, + CP24Time2a (minutes and ms only)
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from enum import Enum

from .asdu import HEADER_LENGTH, AsduError, AsduHeader

IOA_LENGTH = 3


class ValueKind(Enum):
    SINGLE = "single"  # SIQ: SPI bit 0
    DOUBLE = "double"  # DIQ: DPI bits 0-1
    STEP = "step"  # VTI: 7-bit signed value, transient bit 7; then QDS
    BITSTRING = "bitstring"  # BSI: 32 bits; then QDS
    NORMALISED = "normalised"  # NVA: signed 16 bits / 32768; then QDS
    SCALED = "scaled"  # SVA: signed 16 bits; then QDS
    FLOAT = "float"  # IEEE 754 short float; then QDS
    COUNTER = "counter"  # BCR: signed 32 bits + sequence/CY/CA/IV octet
    NORMALISED_NO_QUALITY = "normalised_no_quality"
    END_OF_INIT = "end_of_init"  # COI


class TimeKind(Enum):
    NONE = 0
    CP24 = 3
    CP56 = 7


# type id -> (name, value kind, time tag)
TYPES: dict[int, tuple[str, ValueKind, TimeKind]] = {
    1: ("M_SP_NA_1", ValueKind.SINGLE, TimeKind.NONE),
    2: ("M_SP_TA_1", ValueKind.SINGLE, TimeKind.CP24),
    3: ("M_DP_NA_1", ValueKind.DOUBLE, TimeKind.NONE),
    4: ("M_DP_TA_1", ValueKind.DOUBLE, TimeKind.CP24),
    5: ("M_ST_NA_1", ValueKind.STEP, TimeKind.NONE),
    6: ("M_ST_TA_1", ValueKind.STEP, TimeKind.CP24),
    7: ("M_BO_NA_1", ValueKind.BITSTRING, TimeKind.NONE),
    8: ("M_BO_TA_1", ValueKind.BITSTRING, TimeKind.CP24),
    9: ("M_ME_NA_1", ValueKind.NORMALISED, TimeKind.NONE),
    10: ("M_ME_TA_1", ValueKind.NORMALISED, TimeKind.CP24),
    11: ("M_ME_NB_1", ValueKind.SCALED, TimeKind.NONE),
    12: ("M_ME_TB_1", ValueKind.SCALED, TimeKind.CP24),
    13: ("M_ME_NC_1", ValueKind.FLOAT, TimeKind.NONE),
    14: ("M_ME_TC_1", ValueKind.FLOAT, TimeKind.CP24),
    15: ("M_IT_NA_1", ValueKind.COUNTER, TimeKind.NONE),
    16: ("M_IT_TA_1", ValueKind.COUNTER, TimeKind.CP24),
    21: ("M_ME_ND_1", ValueKind.NORMALISED_NO_QUALITY, TimeKind.NONE),
    30: ("M_SP_TB_1", ValueKind.SINGLE, TimeKind.CP56),
    31: ("M_DP_TB_1", ValueKind.DOUBLE, TimeKind.CP56),
    32: ("M_ST_TB_1", ValueKind.STEP, TimeKind.CP56),
    33: ("M_BO_TB_1", ValueKind.BITSTRING, TimeKind.CP56),
    34: ("M_ME_TD_1", ValueKind.NORMALISED, TimeKind.CP56),
    35: ("M_ME_TE_1", ValueKind.SCALED, TimeKind.CP56),
    36: ("M_ME_TF_1", ValueKind.FLOAT, TimeKind.CP56),
    37: ("M_IT_TB_1", ValueKind.COUNTER, TimeKind.CP56),
    70: ("M_EI_NA_1", ValueKind.END_OF_INIT, TimeKind.NONE),
}
DECODABLE_TYPES = frozenset(TYPES)

# Length of the information element (value + quality), without time tag.
VALUE_LENGTH = {
    ValueKind.SINGLE: 1,
    ValueKind.DOUBLE: 1,
    ValueKind.STEP: 2,
    ValueKind.BITSTRING: 5,
    ValueKind.NORMALISED: 3,
    ValueKind.SCALED: 3,
    ValueKind.FLOAT: 5,
    ValueKind.COUNTER: 5,
    ValueKind.NORMALISED_NO_QUALITY: 2,
    ValueKind.END_OF_INIT: 1,
}

# Kinds whose measured value is an analogue measurement (section 6.3: cyclic, QoS 0).
MEASUREMENT_KINDS = frozenset(
    {ValueKind.NORMALISED, ValueKind.SCALED, ValueKind.FLOAT, ValueKind.NORMALISED_NO_QUALITY}
)


class DecodeError(AsduError):
    """The ASDU is not a well-formed ASDU of a type this decoder knows."""


@dataclass(frozen=True, slots=True)
class Quality:
    """A quality octet (SIQ, DIQ, QDS or the BCR's last octet), named bits and raw.

    OV exists only in the QDS (bit 0); in SIQ/DIQ bit 0-1 are the value. A counter's
    octet has IV in bit 7 like the others, then CA (0x40), CY (0x20) and a sequence
    number; NT/SB/BL/OV do not exist there and read False.
    """

    raw: int
    iv: bool
    nt: bool
    sb: bool
    bl: bool
    ov: bool

    @classmethod
    def from_octet(cls, octet: int, *, has_ov: bool) -> Quality:
        return cls(
            raw=octet,
            iv=bool(octet & 0x80),
            nt=bool(octet & 0x40),
            sb=bool(octet & 0x20),
            bl=bool(octet & 0x10),
            ov=has_ov and bool(octet & 0x01),
        )

    @classmethod
    def counter(cls, octet: int) -> Quality:
        return cls(raw=octet, iv=bool(octet & 0x80), nt=False, sb=False, bl=False, ov=False)


@dataclass(frozen=True, slots=True)
class TimeTag:
    """CP56Time2a (all fields) or CP24Time2a (minute and milliseconds only: hour, day,
    month and year None). `invalid` is the IV bit of the minute octet; `summer` the SU bit."""

    milliseconds: int  # 0..59999 within the minute
    minute: int
    invalid: bool
    hour: int | None = None
    day: int | None = None
    weekday: int | None = None  # 1 = Monday .. 7, 0 = not used
    month: int | None = None
    year: int | None = None  # 2000 + the 7-bit year
    summer: bool = False
    raw: bytes = b""

    def datetime(self) -> datetime.datetime | None:
        """The time tag as an aware UTC datetime (the sites send UTC, see the UPDC
        simulator), or None for CP24Time2a or a date that does not exist."""
        if self.year is None or self.month is None or self.day is None or self.hour is None:
            return None
        try:
            return datetime.datetime(
                self.year,
                self.month,
                self.day,
                self.hour,
                self.minute,
                self.milliseconds // 1000,
                (self.milliseconds % 1000) * 1000,
                tzinfo=datetime.UTC,
            )
        except ValueError:
            return None

    def isoformat(self) -> str | None:
        moment = self.datetime()
        return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class InformationObject:
    address: int  # IOA
    value: float | int | bool  # double point: DPI as a number (1 OFF, 2 ON, 0 and 3 indeterminate)
    quality: Quality | None  # None for M_ME_ND_1 and end of initialisation
    time: TimeTag | None
    extra: dict[str, int | bool] | None = None  # transient bit, counter's CA/CY/sequence, COI details


@dataclass(frozen=True, slots=True)
class DecodedAsdu:
    header: AsduHeader
    type_name: str
    kind: ValueKind
    objects: tuple[InformationObject, ...]


def decode_asdu(asdu: bytes) -> DecodedAsdu:
    """Decode every information object of a monitor-direction ASDU.

    Raises DecodeError for an unknown type, no objects, or a length that does not fit
    the type and VSQ exactly (a device sending something odd; the relay forwards it
    all the same).
    """
    header = AsduHeader.parse(asdu)
    try:
        name, kind, time_kind = TYPES[header.type_id]
    except KeyError:
        raise DecodeError(f"type {header.type_id} is not a monitor-direction type this decoder knows") from None
    element = VALUE_LENGTH[kind] + time_kind.value
    count = header.count
    if header.sequence:
        expected = HEADER_LENGTH + IOA_LENGTH + count * element
    else:
        expected = HEADER_LENGTH + count * (IOA_LENGTH + element)
    if count == 0 or len(asdu) != expected:
        raise DecodeError(f"{name} with VSQ {header.vsq:#04x} has {len(asdu)} octets, expected {expected}")

    objects: list[InformationObject] = []
    offset = HEADER_LENGTH
    first_ioa = 0
    for i in range(count):
        if header.sequence:
            if i == 0:
                first_ioa = int.from_bytes(asdu[offset : offset + 3], "little")
                offset += IOA_LENGTH
            ioa = first_ioa + i
        else:
            ioa = int.from_bytes(asdu[offset : offset + 3], "little")
            offset += IOA_LENGTH
        body = asdu[offset : offset + element]
        offset += element
        objects.append(_decode_element(ioa, kind, time_kind, body))
    return DecodedAsdu(header, name, kind, tuple(objects))


def _decode_element(ioa: int, kind: ValueKind, time_kind: TimeKind, body: bytes) -> InformationObject:
    n = VALUE_LENGTH[kind]
    time = _time_tag(body[n:], time_kind)
    value: float | int | bool
    quality: Quality | None
    extra: dict[str, int | bool] | None = None
    if kind is ValueKind.SINGLE:
        value, quality = bool(body[0] & 0x01), Quality.from_octet(body[0], has_ov=False)
    elif kind is ValueKind.DOUBLE:
        # 0 indeterminate/intermediate, 1 OFF, 2 ON, 3 indeterminate: kept as the number.
        value, quality = body[0] & 0x03, Quality.from_octet(body[0], has_ov=False)
    elif kind is ValueKind.STEP:
        vti = body[0]
        value = (vti & 0x7F) - 0x80 if vti & 0x40 else vti & 0x7F  # 7-bit two's complement
        extra = {"transient": bool(vti & 0x80)}
        quality = Quality.from_octet(body[1], has_ov=True)
    elif kind is ValueKind.BITSTRING:
        value, quality = int.from_bytes(body[0:4], "little"), Quality.from_octet(body[4], has_ov=True)
    elif kind is ValueKind.NORMALISED:
        value = struct.unpack_from("<h", body)[0] / 32768.0
        quality = Quality.from_octet(body[2], has_ov=True)
    elif kind is ValueKind.SCALED:
        value, quality = struct.unpack_from("<h", body)[0], Quality.from_octet(body[2], has_ov=True)
    elif kind is ValueKind.FLOAT:
        value, quality = struct.unpack_from("<f", body)[0], Quality.from_octet(body[4], has_ov=True)
    elif kind is ValueKind.COUNTER:
        value = struct.unpack_from("<i", body)[0]
        octet = body[4]
        extra = {"sequence": octet & 0x1F, "carry": bool(octet & 0x20), "adjusted": bool(octet & 0x40)}
        quality = Quality.counter(octet)
    elif kind is ValueKind.NORMALISED_NO_QUALITY:
        value, quality = struct.unpack_from("<h", body)[0] / 32768.0, None
    else:  # END_OF_INIT: COI, cause of initialisation bits 0-6, bit 7 "after a parameter change"
        value, quality = body[0] & 0x7F, None
        extra = {"after_parameter_change": bool(body[0] & 0x80)}
    return InformationObject(ioa, value, quality, time, extra)


def _time_tag(raw: bytes, kind: TimeKind) -> TimeTag | None:
    if kind is TimeKind.NONE:
        return None
    milliseconds = raw[0] | (raw[1] << 8)
    minute, invalid = raw[2] & 0x3F, bool(raw[2] & 0x80)
    if kind is TimeKind.CP24:
        return TimeTag(milliseconds, minute, invalid, raw=bytes(raw))
    return TimeTag(
        milliseconds,
        minute,
        invalid,
        hour=raw[3] & 0x1F,
        summer=bool(raw[3] & 0x80),
        day=raw[4] & 0x1F,
        weekday=raw[4] >> 5,
        month=raw[5] & 0x0F,
        year=2000 + (raw[6] & 0x7F),
        raw=bytes(raw),
    )
