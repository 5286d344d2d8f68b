"""APCI codec: framing over a byte stream, strict validation, encoders."""

import pytest

from concentrator.iec104.apci import (
    FrameReader,
    FramingError,
    IFrame,
    SFrame,
    UFrame,
    UFunction,
    decode,
    encode_i,
    encode_s,
    encode_u,
)

# A measured value, short float with CP56Time2a (type 36, VSQ 1, COT 3, originator 0,
# CA 101), IOA 1001, value 100.0, QDS 0, time tag.
ASDU_M_ME_TF = bytes.fromhex("24 01 0300 6500 e90300 0000c842 00 10270a0b0c0d17".replace(" ", ""))


def stream_of(frames: list[bytes]) -> bytes:
    return b"".join(frames)


def read_all(reader: FrameReader) -> list:
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    return out


def test_encode_decode_round_trip_of_each_kind():
    assert decode(encode_i(5, 9, ASDU_M_ME_TF)) == IFrame(5, 9, ASDU_M_ME_TF)
    assert decode(encode_s(1234)) == SFrame(1234)
    for function in UFunction:
        assert decode(encode_u(function)) == UFrame(function)


def test_sequence_numbers_use_fifteen_bits_little_endian():
    frame = encode_i(32767, 16384, b"\x01\x01\x03\x00\x65\x00")
    assert frame[2:6] == bytes((0xFE, 0xFF, 0x00, 0x80))
    assert decode(frame) == IFrame(32767, 16384, b"\x01\x01\x03\x00\x65\x00")


@pytest.mark.parametrize(
    "frames",
    [
        [encode_u(UFunction.STARTDT_ACT), encode_i(0, 0, ASDU_M_ME_TF), encode_s(1), encode_i(1, 1, ASDU_M_ME_TF)],
        [encode_i(n, 0, ASDU_M_ME_TF[: 6 + n]) for n in range(5)],
    ],
)
def test_frames_split_at_every_byte_boundary(frames):
    stream = stream_of(frames)
    expected = [decode(f) for f in frames]
    for cut in range(len(stream) + 1):
        reader = FrameReader()
        reader.feed(stream[:cut])
        got = read_all(reader)
        reader.feed(stream[cut:])
        got += read_all(reader)
        assert got == expected, f"split at {cut}"
        assert reader.buffered == 0


def test_frames_fed_one_byte_at_a_time():
    frames = [encode_i(n, n, ASDU_M_ME_TF) for n in range(10)] + [encode_u(UFunction.TESTFR_CON)]
    reader = FrameReader()
    got = []
    for octet in stream_of(frames):
        reader.feed(bytes((octet,)))
        got += read_all(reader)
    assert got == [decode(f) for f in frames]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x69\x04\x07\x00\x00\x00", "start octet 0x69"),
        (b"\x68\x03\x07\x00\x00", "length 3"),
        (b"\x68\xfe" + b"\x00" * 254, "length 254"),
        (b"\x68\x04\x00\x00\x00\x00", "I-frame without an ASDU"),
        (b"\x68\x05\x00\x00\x01\x00\x01", "bit 0 of control octet 3"),
        (b"\x68\x05\x01\x00\x00\x00\x01", "length 5, expected 4"),
        (b"\x68\x04\x01\x01\x00\x00", "malformed S-frame"),
        (b"\x68\x04\x0f\x00\x00\x00", "unknown U-frame"),
        (b"\x68\x04\x03\x00\x00\x00", "unknown U-frame"),
        (b"\x68\x04\x07\x00\x01\x00", "unknown U-frame"),
    ],
)
def test_invalid_frames_are_refused(raw, message):
    reader = FrameReader()
    reader.feed(raw)
    with pytest.raises(FramingError, match=message):
        reader.next_frame()


def test_bad_frame_after_good_ones_yields_the_good_ones_first():
    reader = FrameReader()
    reader.feed(encode_s(3) + encode_u(UFunction.TESTFR_ACT) + b"\x00garbage")
    assert reader.next_frame() == SFrame(3)
    assert reader.next_frame() == UFrame(UFunction.TESTFR_ACT)
    with pytest.raises(FramingError):
        reader.next_frame()


def test_encoder_refuses_an_asdu_too_long_for_the_apdu():
    encode_i(0, 0, b"\x01" * 249)
    with pytest.raises(ValueError):
        encode_i(0, 0, b"\x01" * 250)
    with pytest.raises(ValueError):
        encode_i(0, 0, b"")


def test_asdu_bytes_are_carried_untouched():
    asdu = bytes(range(256))[:249]
    reader = FrameReader()
    reader.feed(encode_i(7, 3, asdu))
    frame = reader.next_frame()
    assert isinstance(frame, IFrame) and frame.asdu == asdu


def test_scapy_decodes_what_we_encode():
    # An independent decoder reads our encoding the same way.
    from scapy.contrib.scada.iec104 import IEC104_I_Message_SingleIOA, IEC104_S_Message, IEC104_U_Message

    i_msg = IEC104_I_Message_SingleIOA(encode_i(32767, 12345, ASDU_M_ME_TF))
    assert (i_msg.tx_seq_num, i_msg.rx_seq_num) == (32767, 12345)
    assert (i_msg.type_id, i_msg.common_asdu_address) == (36, 101)
    assert i_msg.io[0].information_object_address == 1001 and i_msg.io[0].scaled_value == 100.0
    s_msg = IEC104_S_Message(encode_s(777))
    assert s_msg.rx_seq_num == 777
    u_msg = IEC104_U_Message(encode_u(UFunction.TESTFR_ACT))
    assert u_msg.testfr_act == 1 and u_msg.startdt_act == 0
