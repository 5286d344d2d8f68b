"""Outage, loss and duplicate counting from a receiver's arrival log; probe packets."""

from __future__ import annotations

import math
import struct
from ipaddress import IPv4Address

import pytest

from netconfig.probe import echo_request, parse_echo_reply
from tests.lab.measure import analyze


def rows(times: list[float], seqs: list[int] | None = None, conn: int = 1, stream: int = 101):
    seqs = seqs if seqs is not None else list(range(len(times)))
    return [(conn, stream, s, t) for s, t in zip(seqs, times, strict=True)]


def test_outage_is_last_before_to_first_after() -> None:
    r = analyze(rows([0.0, 0.1, 0.2, 0.75, 0.8]), fault_at=0.25)
    assert r.outage == pytest.approx(0.55)
    assert (r.lost, r.duplicated, r.connections, r.received) == (0, 0, 1, 5)


def test_a_later_longer_gap_inside_the_window_counts() -> None:
    # The stream stalls again after resuming (TCP retransmission backoff).
    r = analyze(rows([0.0, 0.3, 0.31, 1.0]), fault_at=0.05)
    assert r.outage == pytest.approx(0.69)


def test_until_excludes_a_later_event() -> None:
    r = analyze(rows([0.0, 0.3, 0.31, 5.0]), fault_at=0.05, until=1.0)
    assert r.outage == pytest.approx(0.3)


def test_nothing_after_the_fault_is_infinite() -> None:
    r = analyze(rows([0.0, 0.1]), fault_at=0.5)
    assert math.isinf(r.outage) and not r.resumed


def test_loss_and_duplicates_from_sequence_numbers() -> None:
    r = analyze(rows([0.0, 0.1, 0.2, 0.3, 0.4], [0, 1, 3, 3, 4]), fault_at=0.0)
    assert r.lost == 1  # 2 never came
    assert r.duplicated == 1  # 3 came twice


def test_stream_filter_and_connections() -> None:
    data = rows([0.0, 1.0], stream=101) + rows([0.5], stream=102) + rows([2.0], [2], conn=2, stream=101)
    r = analyze(data, fault_at=0.2, stream=101)
    assert r.received == 3 and r.connections == 2


def test_echo_request_checksum_and_reply_parsing() -> None:
    req = echo_request(0x1234, 7)
    assert req[0] == 8
    # The one's complement sum over a packet with a correct checksum is 0xFFFF.
    words = struct.unpack(f"!{len(req) // 2}H", req)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    ip_header = bytes([0x45]) + bytes(11) + IPv4Address("172.16.0.2").packed + bytes(4)
    reply = bytes([0]) + req[1:]
    assert parse_echo_reply(ip_header + reply) == (IPv4Address("172.16.0.2"), 0x1234, 7)
    assert parse_echo_reply(ip_header + req) is None  # a request is not a reply
    assert parse_echo_reply(ip_header[:10]) is None


def test_probe_schedule_waits_an_interval_until_rtt_known_then_adapts() -> None:
    from netconfig.probe import ProbeSchedule

    s = ProbeSchedule(interval=0.1, misses=3, min_timeout=0.03)
    assert s.timeout() == 0.1
    s.answered(0.001)
    assert s.timeout() == pytest.approx(0.03)  # LAN: the floor
    for _ in range(20):
        s.answered(0.06)  # a slow path: the wait grows with its RTT, capped at the interval
    assert 0.06 < s.timeout() <= 0.1


def test_probe_schedule_confirms_misses_at_once_then_returns_to_cadence() -> None:
    from netconfig.probe import ProbeSchedule

    s = ProbeSchedule(interval=0.1, misses=3)
    s.answered(0.001)
    assert s.next_send(sent_at=1.0, now=1.001) == pytest.approx(1.1)
    s.missed()
    assert s.next_send(sent_at=1.1, now=1.13) == 1.13  # second probe at once
    s.missed()
    assert s.next_send(sent_at=1.13, now=1.16) == 1.16  # third at once
    s.missed()
    assert s.next_send(sent_at=1.16, now=1.19) == pytest.approx(1.26)  # down: cadence again
    s.answered(0.001)
    assert s.consecutive_misses == 0
    # After a stall, no burst to catch up.
    assert s.next_send(sent_at=2.0, now=2.5) == 2.5
