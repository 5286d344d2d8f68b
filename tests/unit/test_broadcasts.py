"""The broadcast ledger (concentrator/relay/broadcasts.py): which broadcast-CA ASDUs from a
site answer a broadcast the BMI sent it, one for one."""

from __future__ import annotations

from concentrator.relay.broadcasts import BroadcastLedger, answer_cause
from tests.peers.codec_peers import with_cause

SYNC = bytes((103, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0)) + bytes(7)
GI = bytes((100, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0, 20))
GROUP_3 = bytes((100, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0, 23))
COUNTERS = bytes((101, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0, 5))
COMMAND = bytes((45, 1, 6, 0, 0xFF, 0xFF, 0x88, 0x13, 0, 0x81))


def point(cause: int) -> bytes:
    return bytes((1, 1, cause, 0, 0xFF, 0xFF, 1, 0, 0, 1))


def negative(asdu: bytes, cause: int) -> bytes:
    return with_cause(asdu, cause | 0x40)


def test_one_confirmation_per_broadcast_sent_and_none_unsolicited():
    ledger = BroadcastLedger()
    assert not ledger.answers(with_cause(SYNC, 7))  # nothing sent yet
    ledger.sent(SYNC)
    ledger.sent(SYNC)
    assert ledger.answers(with_cause(SYNC, 7))
    assert ledger.answers(negative(SYNC, 7))
    assert not ledger.answers(with_cause(SYNC, 7))  # two sent, two answered
    assert not ledger.answers(with_cause(SYNC, 10))  # a clock sync is not terminated


def test_confirmation_must_be_of_the_type_sent():
    ledger = BroadcastLedger()
    ledger.sent(SYNC)
    assert not ledger.answers(with_cause(GI, 7))
    assert ledger.answers(with_cause(SYNC, 7))


def test_interrogation_confirmed_answered_and_terminated():
    ledger = BroadcastLedger()
    ledger.sent(GI)
    assert not ledger.answers(point(20))  # not confirmed yet
    assert not ledger.answers(with_cause(GI, 10))  # terminated before being confirmed
    assert ledger.answers(with_cause(GI, 7))
    assert ledger.answers(point(20)) and ledger.answers(point(20))  # as many objects as the station has
    assert not ledger.answers(point(21))  # group 1 was not asked
    assert not ledger.answers(point(3))  # spontaneous: a monitor cause
    assert not ledger.answers(bytes((45, 1, 20, 0, 0xFF, 0xFF, 1, 0, 0, 1)))  # a control type
    assert ledger.answers(with_cause(GI, 10))
    assert not ledger.answers(point(20))  # terminated: the answers are over
    assert not ledger.answers(with_cause(GI, 10))


def test_a_negative_confirmation_opens_nothing():
    ledger = BroadcastLedger()
    ledger.sent(GI)
    assert ledger.answers(negative(GI, 7))
    assert not ledger.answers(point(20))
    assert not ledger.answers(with_cause(GI, 10))


def test_station_refusal_uses_the_activation():
    ledger = BroadcastLedger()
    ledger.sent(COMMAND)
    assert ledger.answers(negative(COMMAND, 44))  # unknown type: lib60870's mirror
    assert not ledger.answers(with_cause(COMMAND, 7))


def test_deactivation_confirmed_once():
    ledger = BroadcastLedger()
    ledger.sent(with_cause(COMMAND, 8))
    assert not ledger.answers(with_cause(COMMAND, 7))
    assert ledger.answers(with_cause(COMMAND, 9))
    assert not ledger.answers(with_cause(COMMAND, 9))


def test_command_terminated_after_confirmation():
    ledger = BroadcastLedger()
    ledger.sent(COMMAND)
    assert ledger.answers(with_cause(COMMAND, 7))
    assert ledger.answers(with_cause(COMMAND, 10))
    assert not ledger.answers(with_cause(COMMAND, 10))


def test_answer_causes_of_interrogations():
    assert answer_cause(GI) == 20
    assert answer_cause(GROUP_3) == 23
    assert answer_cause(COUNTERS) == 37
    assert answer_cause(COUNTERS[:-1] + b"\x02") == 39
    assert answer_cause(COUNTERS[:-1] + b"\x00") is None
    assert answer_cause(SYNC) is None
    assert answer_cause(GI[:-1]) is None  # no qualifier


def test_group_interrogation_opens_only_its_group():
    ledger = BroadcastLedger()
    ledger.sent(GROUP_3)
    assert ledger.answers(with_cause(GROUP_3, 7))
    assert not ledger.answers(point(20))
    assert ledger.answers(point(23))


def test_counter_interrogation_answers():
    ledger = BroadcastLedger()
    ledger.sent(COUNTERS)
    assert ledger.answers(with_cause(COUNTERS, 7))
    assert ledger.answers(bytes((15, 1, 37, 0, 0xFF, 0xFF, 1, 0, 0, 0, 0, 0, 0, 0)))
    assert ledger.answers(with_cause(COUNTERS, 10))
    assert not ledger.answers(bytes((15, 1, 37, 0, 0xFF, 0xFF, 1, 0, 0, 0, 0, 0, 0, 0)))


def test_spontaneous_broadcast_is_never_an_answer():
    ledger = BroadcastLedger()
    ledger.sent(bytes((103, 1, 3, 0, 0xFF, 0xFF, 0, 0, 0)) + bytes(7))  # not an activation
    assert not ledger.answers(with_cause(SYNC, 7))
