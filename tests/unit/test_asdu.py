import pytest

from concentrator.iec104.asdu import AsduError, AsduHeader, common_address, negative_mirror

# C_SC_NA_1 single command, VSQ 1, COT 6 activation, originator 3, CA 0x1234, IOA 5000, SCO 0x81.
COMMAND = bytes.fromhex("2d0106033412883100" + "81")


def test_header_fields():
    header = AsduHeader.parse(COMMAND)
    assert header == AsduHeader(
        type_id=45, vsq=1, cause=6, negative=False, test=False, originator=3, common_address=0x1234
    )
    assert header.count == 1 and not header.sequence
    assert common_address(COMMAND) == 0x1234


def test_cause_octet_bits():
    header = AsduHeader.parse(bytes((9, 0x8A, 0xC7, 0, 0xFF, 0xFF)))
    assert (header.cause, header.negative, header.test) == (7, True, True)
    assert header.sequence and header.count == 10
    assert header.common_address == 65535


def test_too_short_is_refused():
    with pytest.raises(AsduError):
        AsduHeader.parse(b"\x01\x01\x03\x00\x65")
    with pytest.raises(AsduError):
        common_address(b"\x01")


def test_negative_mirror_changes_only_cause_and_pn():
    answer = negative_mirror(COMMAND)
    assert len(answer) == len(COMMAND)
    assert answer[2] == 0x40 | 46
    assert answer[:2] == COMMAND[:2] and answer[3:] == COMMAND[3:]
    # The test bit of the original is kept.
    test_command = COMMAND[:2] + bytes((0x86,)) + COMMAND[3:]
    assert negative_mirror(test_command)[2] == 0x80 | 0x40 | 46
