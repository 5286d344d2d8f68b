"""Read-only view of an ASDU header (the profile used here: 2-octet cause, 2-octet CA).

The relay reads the header to route; it never re-encodes an ASDU. The one ASDU the
concentrator originates, the negative answer to an unknown common address, is built
by `negative_mirror` from the bytes it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

HEADER_LENGTH = 6
BROADCAST_CA = 65535  # the global address: every station (IEC 60870-5-101 7.2.4)


class Cause(IntEnum):
    """Causes of transmission (IEC 60870-5-101 7.2.3, bits 0-5 of the COT's first octet)
    that the project reads or writes."""

    PERIODIC = 1
    SPONTANEOUS = 3
    ACTIVATION = 6
    ACTIVATION_CON = 7
    ACTIVATION_TERMINATION = 10
    RETURN_INFO_REMOTE = 11
    INTERROGATED_BY_STATION = 20
    INTERROGATED_BY_GROUP_16 = 36  # 21-36: interrogated by group 1-16
    UNKNOWN_COMMON_ADDRESS = 46


class AsduError(ValueError):
    """The bytes cannot be an ASDU of this profile."""


@dataclass(frozen=True, slots=True)
class AsduHeader:
    type_id: int
    vsq: int
    cause: int
    negative: bool
    test: bool
    originator: int
    common_address: int

    @property
    def sequence(self) -> bool:
        """SQ bit: one IOA followed by `count` consecutive elements."""
        return bool(self.vsq & 0x80)

    @property
    def count(self) -> int:
        return self.vsq & 0x7F

    @classmethod
    def parse(cls, asdu: bytes) -> AsduHeader:
        if len(asdu) < HEADER_LENGTH:
            raise AsduError(f"ASDU of {len(asdu)} octets, shorter than its {HEADER_LENGTH}-octet header")
        cot = asdu[2]
        return cls(
            type_id=asdu[0],
            vsq=asdu[1],
            cause=cot & 0x3F,
            negative=bool(cot & 0x40),
            test=bool(cot & 0x80),
            originator=asdu[3],
            common_address=asdu[4] | (asdu[5] << 8),
        )


def common_address(asdu: bytes) -> int:
    """The CA alone, for routing on the hot path."""
    if len(asdu) < HEADER_LENGTH:
        raise AsduError(f"ASDU of {len(asdu)} octets, shorter than its {HEADER_LENGTH}-octet header")
    return asdu[4] | (asdu[5] << 8)


def negative_mirror(asdu: bytes, cause: int = Cause.UNKNOWN_COMMON_ADDRESS) -> bytes:
    """What a controlled station answers to an ASDU it cannot serve: the same ASDU with
    the given cause and the P/N bit set; test bit, originator, CA and objects kept."""
    if len(asdu) < HEADER_LENGTH:
        raise AsduError(f"ASDU of {len(asdu)} octets, shorter than its {HEADER_LENGTH}-octet header")
    return asdu[:2] + bytes(((asdu[2] & 0x80) | 0x40 | (cause & 0x3F),)) + asdu[3:]
