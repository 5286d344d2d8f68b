"""Frames to ASDUs for the dossier (concentrator/evidence/streams.py): frames built by
scapy (an independent encoder), TCP reassembly through splits, reordering, retransmission,
a join in mid-stream and a gap the capture missed."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from concentrator.evidence.capture import Packet
from concentrator.evidence.streams import Datagram, Reassembler, Segment, parse_frame
from concentrator.iec104.apci import encode_i, encode_s
from tests.peers.codec_peers import counter_asdu

FLOW = ("10.1.1.1", 2404, "10.0.0.1", 40001)


def frame(seq: int, payload: bytes, flags: str = "PA") -> Packet:
    f = Ether() / IP(src=FLOW[0], dst=FLOW[2]) / TCP(sport=FLOW[1], dport=FLOW[3], seq=seq, flags=flags) / payload
    return Packet(0.0, "s1p", False, bytes(f))


def segments(packets: list[Packet]) -> list[Segment]:
    out = []
    for p in packets:
        s = parse_frame(p)
        assert isinstance(s, Segment)
        out.append(s)
    return out


def asdus_of(packets: list[Packet]) -> tuple[list[bytes], list[str]]:
    r = Reassembler(lambda flow: True)
    for s in segments(packets):
        r.feed(s)
    out = r.finish()
    return [a.asdu for a in out.apdus], [p.what for p in out.problems]


ASDUS = [counter_asdu(101, n) for n in range(4)]
STREAM = (
    b"".join(encode_i(n, 0, a) for n, a in enumerate(ASDUS[:2]))
    + encode_s(3)
    + b"".join(encode_i(n + 2, 0, a) for n, a in enumerate(ASDUS[2:]))
)


def test_parse_frame_reads_tcp_and_udp_built_by_scapy() -> None:
    s = parse_frame(frame(1000, b"\x68\x04\x01\x00\x00\x00"))
    assert isinstance(s, Segment) and s.flow == FLOW and s.seq == 1000 and s.payload == b"\x68\x04\x01\x00\x00\x00"
    d = parse_frame(
        Packet(
            1.0,
            "up0",
            False,
            bytes(Ether() / IP(src="10.0.1.1", dst="239.1.2.3", ttl=16) / UDP(sport=5, dport=30104) / b"trip"),
        )
    )
    assert isinstance(d, Datagram) and (d.dst, d.dport, d.ttl, d.payload) == ("239.1.2.3", 30104, 16, b"trip")


def test_split_reordered_and_retransmitted_segments_give_each_asdu_once_in_order() -> None:
    syn = frame(99, b"", flags="S")
    cut = [STREAM[0:5], STREAM[5:23], STREAM[23:40], STREAM[40:]]
    offsets = [100, 105, 123, 140]
    packets = [
        syn,
        frame(offsets[0], cut[0]),
        frame(offsets[2], cut[2]),
        frame(offsets[1], cut[1]),
        frame(offsets[1], cut[1]),
        frame(offsets[3], cut[3]),
    ]
    assert asdus_of(packets) == (ASDUS, [])


def test_a_connection_joined_mid_stream_starts_at_the_first_apdu_boundary() -> None:
    first = encode_i(0, 0, ASDUS[0])
    # The capture begins inside the first APDU: its tail is skipped, the rest decoded.
    packets = [frame(1003, first[3:]), frame(1000 + len(first), STREAM[len(first) :])]
    got, problems = asdus_of(packets)
    assert got == ASDUS[1:] and problems == []


def test_a_gap_the_capture_missed_is_reported_not_guessed() -> None:
    packets = [frame(99, b"", flags="S"), frame(100, STREAM[:20]), frame(100 + 30, STREAM[30:])]
    got, problems = asdus_of(packets)
    assert got == ASDUS[:1] and len(problems) == 1 and "never captured" in problems[0]


def test_bytes_that_are_not_iec_104_are_a_framing_problem() -> None:
    packets = [frame(99, b"", flags="S"), frame(100, b"GET / HTTP/1.1\r\n")]
    got, problems = asdus_of(packets)
    assert got == [] and "framing error" in problems[0]
