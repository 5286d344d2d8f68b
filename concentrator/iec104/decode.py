"""Read-only decoder of the ASDUs a site sends (IEC 60870-5-101/104, companion 104 profile).

It reads copies: the relay forwards the original bytes and never re-encodes anything.
Used off the relay's hot path (the MQTT mirror and the shedding monitor decode in
processes of their own), so clarity matters more here than speed.

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
    38 M_EP_TD_1  SEP + CP16Time2a (elapsed) + CP56Time2a      protection equipment:
    39 M_EP_TE_1  SPE + QDP + CP16 (relay duration) + CP56     event, packed start events,
    40 M_EP_TF_1  OCI + QDP + CP16 (relay operating) + CP56    packed output circuit info

Command confirmations and terminations, as a site sends them back (cause 7, 10, 44-47):

    45 C_SC_NA_1  SCO    46 C_DC_NA_1  DCO    47 C_RC_NA_1  RCO      51 C_BO_NA_1  BSI(4)
    48 C_SE_NA_1  NVA + QOS    49 C_SE_NB_1  SVA + QOS    50 C_SE_NC_1  float + QOS
    58-64: as 45-51, + CP56Time2a        100 C_IC_NA_1  QOI    101 C_CI_NA_1  QCC
    102 C_RD_NA_1  (nothing)    103 C_CS_NA_1  CP56Time2a    105 C_RP_NA_1  QRP
    107 C_TS_TA_1  TSC(2) + CP56Time2a
Commands carry no quality descriptor.

Time tags: CP56Time2a as local time of the site's configured zone (UTC by default); in
the hour that repeats when summer time ends, its SU bit says which of the two it is.
CP24Time2a (minute and milliseconds) resolved against the time the relay received it.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

from .asdu import HEADER_LENGTH, AsduError, AsduHeader

IOA_LENGTH = 3
# TimeTag has a method named datetime: inside the class, these names are unambiguous.
UTC = datetime.UTC
Zone = datetime.tzinfo
Moment = datetime.datetime


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
    PROTECTION_EVENT = "protection_event"  # SEP (event state bits 0-1, quality), CP16 elapsed time
    PROTECTION_START = "protection_start"  # SPE, QDP, CP16 relay duration
    PROTECTION_OUTPUT = "protection_output"  # OCI, QDP, CP16 relay operating time
    SINGLE_COMMAND = "single_command"  # SCO: SCS bit 0, QU bits 2-6, S/E bit 7
    DOUBLE_COMMAND = "double_command"  # DCO: DCS bits 0-1, QU, S/E
    STEP_COMMAND = "step_command"  # RCO: RCS bits 0-1 (1 lower, 2 higher), QU, S/E
    SETPOINT_NORMALISED = "setpoint_normalised"  # NVA + QOS (QL bits 0-6, S/E bit 7)
    SETPOINT_SCALED = "setpoint_scaled"  # SVA + QOS
    SETPOINT_FLOAT = "setpoint_float"  # float + QOS
    BITSTRING_COMMAND = "bitstring_command"  # BSI
    INTERROGATION = "interrogation"  # QOI
    COUNTER_INTERROGATION = "counter_interrogation"  # QCC: RQT bits 0-5, FRZ bits 6-7
    READ = "read"  # no element
    CLOCK_SYNC = "clock_sync"  # only the CP56Time2a
    RESET_PROCESS = "reset_process"  # QRP
    TEST_COMMAND = "test_command"  # TSC, 16 bits


class TimeKind(Enum):
    NONE = 0
    CP24 = 3
    CP56 = 7


class TypeId(IntEnum):
    """Type identifications (IEC 60870-5-101 7.2.1, 104 companion profile) this decoder knows."""

    M_SP_NA_1 = 1
    M_SP_TA_1 = 2
    M_DP_NA_1 = 3
    M_DP_TA_1 = 4
    M_ST_NA_1 = 5
    M_ST_TA_1 = 6
    M_BO_NA_1 = 7
    M_BO_TA_1 = 8
    M_ME_NA_1 = 9
    M_ME_TA_1 = 10
    M_ME_NB_1 = 11
    M_ME_TB_1 = 12
    M_ME_NC_1 = 13
    M_ME_TC_1 = 14
    M_IT_NA_1 = 15
    M_IT_TA_1 = 16
    M_ME_ND_1 = 21
    M_SP_TB_1 = 30
    M_DP_TB_1 = 31
    M_ST_TB_1 = 32
    M_BO_TB_1 = 33
    M_ME_TD_1 = 34
    M_ME_TE_1 = 35
    M_ME_TF_1 = 36
    M_IT_TB_1 = 37
    M_EP_TD_1 = 38
    M_EP_TE_1 = 39
    M_EP_TF_1 = 40
    C_SC_NA_1 = 45
    C_DC_NA_1 = 46
    C_RC_NA_1 = 47
    C_SE_NA_1 = 48
    C_SE_NB_1 = 49
    C_SE_NC_1 = 50
    C_BO_NA_1 = 51
    C_SC_TA_1 = 58
    C_DC_TA_1 = 59
    C_RC_TA_1 = 60
    C_SE_TA_1 = 61
    C_SE_TB_1 = 62
    C_SE_TC_1 = 63
    C_BO_TA_1 = 64
    M_EI_NA_1 = 70
    C_IC_NA_1 = 100
    C_CI_NA_1 = 101
    C_RD_NA_1 = 102
    C_CS_NA_1 = 103
    C_RP_NA_1 = 105
    C_TS_TA_1 = 107


# type id -> (value kind, time tag)
_LAYOUTS: dict[TypeId, tuple[ValueKind, TimeKind]] = {
    TypeId.M_SP_NA_1: (ValueKind.SINGLE, TimeKind.NONE),
    TypeId.M_SP_TA_1: (ValueKind.SINGLE, TimeKind.CP24),
    TypeId.M_DP_NA_1: (ValueKind.DOUBLE, TimeKind.NONE),
    TypeId.M_DP_TA_1: (ValueKind.DOUBLE, TimeKind.CP24),
    TypeId.M_ST_NA_1: (ValueKind.STEP, TimeKind.NONE),
    TypeId.M_ST_TA_1: (ValueKind.STEP, TimeKind.CP24),
    TypeId.M_BO_NA_1: (ValueKind.BITSTRING, TimeKind.NONE),
    TypeId.M_BO_TA_1: (ValueKind.BITSTRING, TimeKind.CP24),
    TypeId.M_ME_NA_1: (ValueKind.NORMALISED, TimeKind.NONE),
    TypeId.M_ME_TA_1: (ValueKind.NORMALISED, TimeKind.CP24),
    TypeId.M_ME_NB_1: (ValueKind.SCALED, TimeKind.NONE),
    TypeId.M_ME_TB_1: (ValueKind.SCALED, TimeKind.CP24),
    TypeId.M_ME_NC_1: (ValueKind.FLOAT, TimeKind.NONE),
    TypeId.M_ME_TC_1: (ValueKind.FLOAT, TimeKind.CP24),
    TypeId.M_IT_NA_1: (ValueKind.COUNTER, TimeKind.NONE),
    TypeId.M_IT_TA_1: (ValueKind.COUNTER, TimeKind.CP24),
    TypeId.M_ME_ND_1: (ValueKind.NORMALISED_NO_QUALITY, TimeKind.NONE),
    TypeId.M_SP_TB_1: (ValueKind.SINGLE, TimeKind.CP56),
    TypeId.M_DP_TB_1: (ValueKind.DOUBLE, TimeKind.CP56),
    TypeId.M_ST_TB_1: (ValueKind.STEP, TimeKind.CP56),
    TypeId.M_BO_TB_1: (ValueKind.BITSTRING, TimeKind.CP56),
    TypeId.M_ME_TD_1: (ValueKind.NORMALISED, TimeKind.CP56),
    TypeId.M_ME_TE_1: (ValueKind.SCALED, TimeKind.CP56),
    TypeId.M_ME_TF_1: (ValueKind.FLOAT, TimeKind.CP56),
    TypeId.M_IT_TB_1: (ValueKind.COUNTER, TimeKind.CP56),
    TypeId.M_EP_TD_1: (ValueKind.PROTECTION_EVENT, TimeKind.CP56),
    TypeId.M_EP_TE_1: (ValueKind.PROTECTION_START, TimeKind.CP56),
    TypeId.M_EP_TF_1: (ValueKind.PROTECTION_OUTPUT, TimeKind.CP56),
    TypeId.C_SC_NA_1: (ValueKind.SINGLE_COMMAND, TimeKind.NONE),
    TypeId.C_DC_NA_1: (ValueKind.DOUBLE_COMMAND, TimeKind.NONE),
    TypeId.C_RC_NA_1: (ValueKind.STEP_COMMAND, TimeKind.NONE),
    TypeId.C_SE_NA_1: (ValueKind.SETPOINT_NORMALISED, TimeKind.NONE),
    TypeId.C_SE_NB_1: (ValueKind.SETPOINT_SCALED, TimeKind.NONE),
    TypeId.C_SE_NC_1: (ValueKind.SETPOINT_FLOAT, TimeKind.NONE),
    TypeId.C_BO_NA_1: (ValueKind.BITSTRING_COMMAND, TimeKind.NONE),
    TypeId.C_SC_TA_1: (ValueKind.SINGLE_COMMAND, TimeKind.CP56),
    TypeId.C_DC_TA_1: (ValueKind.DOUBLE_COMMAND, TimeKind.CP56),
    TypeId.C_RC_TA_1: (ValueKind.STEP_COMMAND, TimeKind.CP56),
    TypeId.C_SE_TA_1: (ValueKind.SETPOINT_NORMALISED, TimeKind.CP56),
    TypeId.C_SE_TB_1: (ValueKind.SETPOINT_SCALED, TimeKind.CP56),
    TypeId.C_SE_TC_1: (ValueKind.SETPOINT_FLOAT, TimeKind.CP56),
    TypeId.C_BO_TA_1: (ValueKind.BITSTRING_COMMAND, TimeKind.CP56),
    TypeId.M_EI_NA_1: (ValueKind.END_OF_INIT, TimeKind.NONE),
    TypeId.C_IC_NA_1: (ValueKind.INTERROGATION, TimeKind.NONE),
    TypeId.C_CI_NA_1: (ValueKind.COUNTER_INTERROGATION, TimeKind.NONE),
    TypeId.C_RD_NA_1: (ValueKind.READ, TimeKind.NONE),
    TypeId.C_CS_NA_1: (ValueKind.CLOCK_SYNC, TimeKind.CP56),
    TypeId.C_RP_NA_1: (ValueKind.RESET_PROCESS, TimeKind.NONE),
    TypeId.C_TS_TA_1: (ValueKind.TEST_COMMAND, TimeKind.CP56),
}
# type id -> (name, value kind, time tag); plain int keys: the relay looks up received octets
TYPES: dict[int, tuple[str, ValueKind, TimeKind]] = {int(t): (t.name, *layout) for t, layout in _LAYOUTS.items()}
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
    ValueKind.PROTECTION_EVENT: 3,
    ValueKind.PROTECTION_START: 4,
    ValueKind.PROTECTION_OUTPUT: 4,
    ValueKind.SINGLE_COMMAND: 1,
    ValueKind.DOUBLE_COMMAND: 1,
    ValueKind.STEP_COMMAND: 1,
    ValueKind.SETPOINT_NORMALISED: 3,
    ValueKind.SETPOINT_SCALED: 3,
    ValueKind.SETPOINT_FLOAT: 5,
    ValueKind.BITSTRING_COMMAND: 4,
    ValueKind.INTERROGATION: 1,
    ValueKind.COUNTER_INTERROGATION: 1,
    ValueKind.READ: 0,
    ValueKind.CLOCK_SYNC: 0,
    ValueKind.RESET_PROCESS: 1,
    ValueKind.TEST_COMMAND: 2,
}

# Analogue measurements and integrated totals: the values a site sends again and again,
# each sample replacing the last (the MQTT mirror publishes them at QoS 0, section 6.3 of
# the operator's specification, and drops them first when its queue is full).
CYCLIC_KINDS = frozenset(
    {ValueKind.NORMALISED, ValueKind.SCALED, ValueKind.FLOAT, ValueKind.NORMALISED_NO_QUALITY, ValueKind.COUNTER}
)
CYCLIC_TYPES = frozenset(type_id for type_id, (_, kind, _) in TYPES.items() if kind in CYCLIC_KINDS)


class DecodeError(AsduError):
    """The ASDU is not a well-formed ASDU of a type this decoder knows."""


# Which bits of the octet carrying quality are quality bits (IV, NT, SB, BL always):
QDS_BITS = 0xF1  # measured values: OV bit 0 (bits 1-3 reserved)
SIQ_BITS = 0xF0  # single/double point: bits 0-1 are the value
SEP_BITS = 0xF8  # protection event (SEP) and QDP: EI bit 3; a SEP's bits 0-1 are the event state
BCR_BITS = 0x80  # counter: IV only; CA, CY and the sequence number are the reading's


@dataclass(frozen=True, slots=True)
class Quality:
    """The quality bits of an information object: `raw` holds only those (never value
    bits), then each named. A bit the octet does not have (OV outside a QDS, EI outside
    SEP/QDP, all but IV in a counter) reads False."""

    raw: int
    iv: bool
    nt: bool
    sb: bool
    bl: bool
    ov: bool
    ei: bool = False  # elapsed time invalid (protection equipment)

    @classmethod
    def from_octet(cls, octet: int, bits: int) -> Quality:
        octet &= bits
        return cls(
            raw=octet,
            iv=bool(octet & 0x80),
            nt=bool(octet & 0x40),
            sb=bool(octet & 0x20),
            bl=bool(octet & 0x10),
            ov=bool(octet & 0x01),
            ei=bool(octet & 0x08),
        )


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

    def datetime(self, zone: Zone = UTC, received: Moment | None = None) -> Moment | None:
        """The time tag as an aware datetime. CP56Time2a: the site's local time in `zone`;
        in the hour that repeats when summer time ends, the SU bit picks the first
        (summer) or the second occurrence. CP24Time2a: the latest such minute and
        millisecond at or before `received` (a minute of clock skew allowed), or None
        without it. None for a date that does not exist."""
        if self.year is None or self.month is None or self.day is None or self.hour is None:
            return None if received is None else self._resolve(zone, received)
        try:
            naive = datetime.datetime(
                self.year, self.month, self.day, self.hour, self.minute,
                self.milliseconds // 1000, (self.milliseconds % 1000) * 1000,
            )  # fmt: skip
        except ValueError:
            return None
        first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
        if first.utcoffset() != second.utcoffset():  # the repeated hour
            return first if self.summer else second
        return first

    def _resolve(self, zone: Zone, received: Moment) -> Moment | None:
        if self.milliseconds > 59999 or self.minute > 59:
            return None
        local = received.astimezone(zone)
        candidate = local.replace(minute=self.minute, second=self.milliseconds // 1000,
                                  microsecond=(self.milliseconds % 1000) * 1000)  # fmt: skip
        if candidate > local + datetime.timedelta(minutes=1):
            candidate -= datetime.timedelta(hours=1)  # from the hour before
        return candidate

    def isoformat(self, zone: Zone = UTC, received: Moment | None = None) -> str | None:
        """ISO 8601 with the zone's offset ("Z" for UTC), milliseconds."""
        moment = self.datetime(zone, received)
        return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class InformationObject:
    address: int  # IOA
    value: float | int | bool | None  # double point: DPI as a number (1 OFF, 2 ON, 0 and 3 indeterminate)
    quality: Quality | None  # None for M_ME_ND_1, end of initialisation and commands
    time: TimeTag | None
    extra: dict[str, int | bool] | None = None  # transient bit, counter's CA/CY/sequence, COI details


@dataclass(frozen=True, slots=True)
class DecodedAsdu:
    header: AsduHeader
    type_name: str
    kind: ValueKind
    objects: tuple[InformationObject, ...]


def decode_asdu(asdu: bytes) -> DecodedAsdu:
    """Decode every information object of an ASDU of a type in TYPES (monitor direction,
    and the command confirmations a site sends back).

    Raises DecodeError for an unknown type, no objects, or a length that does not fit
    the type and VSQ exactly (a device sending something odd; the relay forwards it
    all the same).
    """
    header = AsduHeader.parse(asdu)
    try:
        name, kind, time_kind = TYPES[header.type_id]
    except KeyError:
        raise DecodeError(f"type {header.type_id} is not a type this decoder knows") from None
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
    value: float | int | bool | None
    quality: Quality | None = None
    extra: dict[str, int | bool] | None = None
    if kind is ValueKind.SINGLE:
        value, quality = bool(body[0] & 0x01), Quality.from_octet(body[0], SIQ_BITS)
    elif kind is ValueKind.DOUBLE:
        # 0 indeterminate/intermediate, 1 OFF, 2 ON, 3 indeterminate: kept as the number.
        value, quality = body[0] & 0x03, Quality.from_octet(body[0], SIQ_BITS)
    elif kind is ValueKind.STEP:
        vti = body[0]
        value = (vti & 0x7F) - 0x80 if vti & 0x40 else vti & 0x7F  # 7-bit two's complement
        extra = {"transient": bool(vti & 0x80)}
        quality = Quality.from_octet(body[1], QDS_BITS)
    elif kind in (ValueKind.BITSTRING, ValueKind.BITSTRING_COMMAND):
        value = int.from_bytes(body[0:4], "little")
        if kind is ValueKind.BITSTRING:
            quality = Quality.from_octet(body[4], QDS_BITS)
    elif kind in (ValueKind.NORMALISED, ValueKind.NORMALISED_NO_QUALITY):
        value = struct.unpack_from("<h", body)[0] / 32768.0
        if kind is ValueKind.NORMALISED:
            quality = Quality.from_octet(body[2], QDS_BITS)
    elif kind is ValueKind.SCALED:
        value, quality = struct.unpack_from("<h", body)[0], Quality.from_octet(body[2], QDS_BITS)
    elif kind is ValueKind.FLOAT:
        value, quality = struct.unpack_from("<f", body)[0], Quality.from_octet(body[4], QDS_BITS)
    elif kind is ValueKind.COUNTER:
        value = struct.unpack_from("<i", body)[0]
        octet = body[4]
        extra = {"sequence": octet & 0x1F, "carry": bool(octet & 0x20), "adjusted": bool(octet & 0x40)}
        quality = Quality.from_octet(octet, BCR_BITS)
    elif kind is ValueKind.END_OF_INIT:  # COI: cause of initialisation bits 0-6, bit 7 "after a parameter change"
        value = body[0] & 0x7F
        extra = {"after_parameter_change": bool(body[0] & 0x80)}
    elif kind is ValueKind.PROTECTION_EVENT:
        # Event state like a double point (1 OFF, 2 ON); CP16Time2a: elapsed time, ms.
        value, quality = body[0] & 0x03, Quality.from_octet(body[0], SEP_BITS)
        extra = {"elapsed_ms": body[1] | body[2] << 8}
    elif kind is ValueKind.PROTECTION_START:
        spe = body[0]
        value, quality = spe, Quality.from_octet(body[1], SEP_BITS)
        extra = {"general_start": bool(spe & 0x01), "start_l1": bool(spe & 0x02), "start_l2": bool(spe & 0x04),
                 "start_l3": bool(spe & 0x08), "start_earth": bool(spe & 0x10), "start_reverse": bool(spe & 0x20),
                 "duration_ms": body[2] | body[3] << 8}  # fmt: skip
    elif kind is ValueKind.PROTECTION_OUTPUT:
        oci = body[0]
        value, quality = oci, Quality.from_octet(body[1], SEP_BITS)
        extra = {"general_command": bool(oci & 0x01), "command_l1": bool(oci & 0x02),
                 "command_l2": bool(oci & 0x04), "command_l3": bool(oci & 0x08),
                 "operating_ms": body[2] | body[3] << 8}  # fmt: skip
    elif kind in (ValueKind.SINGLE_COMMAND, ValueKind.DOUBLE_COMMAND, ValueKind.STEP_COMMAND):
        octet = body[0]
        value = bool(octet & 0x01) if kind is ValueKind.SINGLE_COMMAND else octet & 0x03
        extra = {"select": bool(octet & 0x80), "qualifier": (octet >> 2) & 0x1F}
    elif kind in (ValueKind.SETPOINT_NORMALISED, ValueKind.SETPOINT_SCALED, ValueKind.SETPOINT_FLOAT):
        if kind is ValueKind.SETPOINT_FLOAT:
            value = struct.unpack_from("<f", body)[0]
        else:
            raw = struct.unpack_from("<h", body)[0]
            value = raw / 32768.0 if kind is ValueKind.SETPOINT_NORMALISED else raw
        qos = body[n - 1]
        extra = {"select": bool(qos & 0x80), "qualifier": qos & 0x7F}
    elif kind in (ValueKind.INTERROGATION, ValueKind.RESET_PROCESS):
        value = body[0]  # QOI (20 station, 21-36 groups) or QRP
    elif kind is ValueKind.COUNTER_INTERROGATION:
        value = body[0] & 0x3F
        extra = {"freeze": body[0] >> 6}
    elif kind is ValueKind.TEST_COMMAND:
        value = body[0] | body[1] << 8
    else:  # READ, CLOCK_SYNC: nothing but the address (and the time tag)
        value = None
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
