"""The c104 simulators against each other on loopback, with no relay in between.

Each UPDC listens on its own free port and gets its own BmiSimulator (a BMI has one
connection). These tests pin down what the peers send, so that relay tests can
tell the relay's doing from c104's.
"""

import datetime
import struct
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import c104
import pytest

from concentrator.iec104.asdu import AsduHeader, Cause
from concentrator.iec104.decode import TypeId
from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.points import (
    IOA_BREAKER,
    IOA_BREAKER_CMD,
    IOA_LOCK,
    IOA_TOTAL_POWER,
    load_power_ioa,
    wait_until,
)
from concentrator.sim.updc import UpdcSimulator

CAS = (11, 12)
SAMPLE_PERIOD = 0.2
# A fresh c104 connection stays muted about 1 time in 7; unmute sooner than the
# default 1 s so that the unlucky tests stay fast (it opens in ~10 ms otherwise).
UNMUTE_AFTER = 0.25
# Bounds what a missed select confirmation (see BmiSimulator) costs a test.
COMMAND_TIMEOUT_MS = 1000

Pair = tuple[UpdcSimulator, BmiSimulator]


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    updcs = [UpdcSimulator(f"site{ca}", ca, sample_period=SAMPLE_PERIOD, seed=ca) for ca in CAS]
    bmis: list[BmiSimulator] = []
    try:
        for updc in updcs:
            updc.start()
            bmis.append(
                BmiSimulator(
                    "127.0.0.1",
                    updc.port,
                    [updc.common_address],
                    unmute_after=UNMUTE_AFTER,
                    command_timeout_ms=COMMAND_TIMEOUT_MS,
                )
            )
            bmis[-1].start()
        for bmi in bmis:
            assert bmi.wait_started(timeout=3.0)
        yield list(zip(updcs, bmis, strict=True))
    finally:
        # c104's Client.stop() takes ~0.1 s (its socket poll); stop them together.
        stops: list[Callable[[], None]] = [peer.stop for peer in bmis] + [u.stop for u in updcs]
        stoppers = [threading.Thread(target=stop) for stop in stops]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()


def cp56(octets: bytes) -> datetime.datetime:
    """CP56Time2a (IEC 60870-5-4), read as UTC as the UPDC writes it."""
    millis = octets[0] | (octets[1] << 8)
    assert not octets[2] & 0x80, "time tag flagged invalid"
    return datetime.datetime(
        2000 + (octets[6] & 0x7F),
        octets[5] & 0x0F,
        octets[4] & 0x1F,
        octets[3] & 0x1F,
        octets[2] & 0x3F,
        millis // 1000,
        (millis % 1000) * 1000,
        tzinfo=datetime.UTC,
    )


def objects(asdu: bytes, size: int) -> list[tuple[int, bytes]]:
    """(IOA, element) pairs, whether the ASDU lists its objects or sends a sequence
    (SQ=1: one IOA, consecutive objects; c104 does that when IOAs are consecutive)."""
    head = AsduHeader.parse(asdu)
    body = asdu[6:]
    if head.sequence:
        first = int.from_bytes(body[:3], "little")
        assert len(body) == 3 + head.count * size
        return [(first + i, body[3 + i * size : 3 + (i + 1) * size]) for i in range(head.count)]
    assert len(body) == head.count * (3 + size)
    return [
        (
            int.from_bytes(body[i * (3 + size) : i * (3 + size) + 3], "little"),
            body[i * (3 + size) + 3 : (i + 1) * (3 + size)],
        )
        for i in range(head.count)
    ]


def is_(type_id: int, cause: int, ca: int | None = None, negative: bool = False) -> Callable[[AsduHeader], bool]:
    def match(h: AsduHeader) -> bool:
        return (
            h.type_id == type_id
            and h.cause == cause
            and h.negative == negative
            and (ca is None or h.common_address == ca)
        )

    return match


def captures_agree(updc: UpdcSimulator, bmi: BmiSimulator) -> bool:
    return updc.sent_asdus() == bmi.received_asdus() and bmi.sent_asdus() == updc.received_asdus()


def kinds(updc: UpdcSimulator) -> set[tuple[int, int]]:
    """(type, cause) of every ASDU the UPDC sent."""
    return {(a[0], a[2] & 0x3F) for a in updc.sent_asdus()}


def settled(updc: UpdcSimulator, bmi: BmiSimulator, expected: set[tuple[int, int]]) -> bool:
    return expected <= kinds(updc) and captures_agree(updc, bmi)


def test_time_tagged_measurements_arrive_every_period(pairs: list[Pair]) -> None:
    for updc, bmi in pairs:
        ca = updc.common_address
        samples = bmi.wait_received(is_(TypeId.M_ME_TF_1, Cause.SPONTANEOUS, ca), count=2, timeout=3.0)
        assert len(samples) >= 2
        now = datetime.datetime.now(datetime.UTC)
        for asdu in samples[:2]:
            values = objects(asdu, 12)  # float 4 + QDS 1 + CP56Time2a 7
            assert [ioa for ioa, _ in values] == [
                IOA_TOTAL_POWER,
                *(load_power_ioa(n) for n in range(1, updc.loads + 1)),
            ]
            for _, element in values:
                assert element[4] == 0  # quality good
                assert abs((now - cp56(element[5:])).total_seconds()) < 5
            total, *loads = (struct.unpack("<f", e[:4])[0] for _, e in values)
            assert all(v > 0 for v in loads)
            assert total == pytest.approx(updc.base_kw + sum(loads), rel=0.05)
        first, second = (cp56(objects(a, 12)[0][1][5:]) for a in samples[:2])
        assert (second - first).total_seconds() == pytest.approx(SAMPLE_PERIOD, abs=0.15)


def test_interrogation_is_answered_by_each_station(pairs: list[Pair]) -> None:
    for updc, bmi in pairs:
        ca = updc.common_address
        assert bmi.interrogation(ca)
        assert bmi.wait_received(is_(TypeId.C_IC_NA_1, Cause.ACTIVATION_TERMINATION, ca))
        gi = [AsduHeader.parse(a) for a in bmi.received_asdus()]
        gi = [h for h in gi if h.type_id == TypeId.C_IC_NA_1 or h.cause == Cause.INTERROGATED_BY_STATION]
        assert [h.type_id for h in gi] == [
            TypeId.C_IC_NA_1,
            TypeId.M_SP_TB_1,
            TypeId.M_DP_TB_1,
            TypeId.M_ME_TF_1,
            TypeId.C_IC_NA_1,
        ]
        assert [h.cause for h in gi][0::4] == [Cause.ACTIVATION_CON, Cause.ACTIVATION_TERMINATION]
        assert {h.common_address for h in gi} == {ca}


def test_broadcast_interrogation_is_confirmed_with_the_station_ca(pairs: list[Pair]) -> None:
    updc, bmi = pairs[0]
    assert bmi.interrogation()  # CA 65535
    terms = bmi.wait_received(is_(TypeId.C_IC_NA_1, Cause.ACTIVATION_TERMINATION))
    assert [AsduHeader.parse(a).common_address for a in terms] == [updc.common_address]
    assert AsduHeader.parse(bmi.sent_asdus()[-1]).common_address == 0xFFFF


def test_unknown_ca_is_answered_twice(pairs: list[Pair]) -> None:
    # c104 answers an unknown CA with ACT_CON negative AND a cause-46 mirror whose
    # P/N bit is clear (c104's own client then reports success or failure at
    # random; BmiSimulator judges from the captures).
    updc, bmi = pairs[0]
    assert not bmi.interrogation(99)
    assert bmi.wait_received(is_(TypeId.C_IC_NA_1, Cause.UNKNOWN_COMMON_ADDRESS, 99))
    assert bmi.wait_received(is_(TypeId.C_IC_NA_1, Cause.ACTIVATION_CON, 99, negative=True))


def test_breaker_select_and_execute(pairs: list[Pair]) -> None:
    (updc, bmi), (other, other_bmi) = pairs
    ca = updc.common_address
    assert updc.breaker_closed

    assert bmi.select_and_execute_breaker(ca, on=False)
    assert not updc.breaker_closed
    assert [c.close for c in updc.executed_commands] == [False]

    assert bmi.wait_received(is_(TypeId.C_DC_NA_1, Cause.ACTIVATION_TERMINATION, ca))
    # select con (S/E bit 0x80, DCS 1 = OFF), execute con, termination; c104 echoes
    # the select's S/E bit in ACT_TERM. BmiSimulator selects a second time when
    # c104's client misses the first select confirmation (about 1 in 100 here).
    commands = [(a[2], objects(a, 1)) for a in bmi.received_asdus() if a[0] == TypeId.C_DC_NA_1]
    select_con = (Cause.ACTIVATION_CON, [(IOA_BREAKER_CMD, b"\x81")])
    while commands[:2] == [select_con, select_con]:
        commands.pop(0)
    assert commands == [
        select_con,
        (Cause.ACTIVATION_CON, [(IOA_BREAKER_CMD, b"\x01")]),
        (Cause.ACTIVATION_TERMINATION, [(IOA_BREAKER_CMD, b"\x81")]),
    ]
    # The breaker change, time-tagged (DIQ 1 + CP56Time2a 7).
    [change] = bmi.wait_received(is_(TypeId.M_DP_TB_1, Cause.SPONTANEOUS, ca))
    [(ioa, element)] = objects(change, 8)
    assert (ioa, element[0]) == (IOA_BREAKER, 0x01)  # DPI 1 = OFF = open
    age = datetime.datetime.now(datetime.UTC) - cp56(element[1:])
    assert abs(age.total_seconds()) < 5

    # Open breaker: the loads read zero in the following samples.
    def loads_zero() -> bool:
        samples = [a for a in bmi.received_asdus() if a[0] == TypeId.M_ME_TF_1 and a[2] == Cause.SPONTANEOUS]
        return any(all(e[:4] == bytes(4) for _, e in objects(a, 12)[1:]) for a in samples)

    assert wait_until(loads_zero, 2.0)

    assert bmi.select_and_execute_breaker(ca, on=True)
    assert updc.breaker_closed
    # The other site saw nothing of it.
    assert other.breaker_closed and not other.executed_commands
    assert not [a for a in other_bmi.received_asdus() if a[0] == TypeId.C_DC_NA_1]


def test_refused_breaker_command_is_confirmed_negative(pairs: list[Pair]) -> None:
    updc, bmi = pairs[0]
    updc.accept_commands = False
    assert not bmi.select_and_execute_breaker(updc.common_address, on=False)
    assert updc.breaker_closed and not updc.executed_commands
    assert bmi.wait_received(is_(TypeId.C_DC_NA_1, Cause.ACTIVATION_CON, negative=True))


def test_spontaneous_signals_and_clock_sync(pairs: list[Pair]) -> None:
    for updc, bmi in pairs:
        ca = updc.common_address
        assert updc.toggle_breaker() is False
        assert updc.toggle_lock() is True
        [dp] = bmi.wait_received(is_(TypeId.M_DP_TB_1, Cause.SPONTANEOUS, ca))
        [sp] = bmi.wait_received(is_(TypeId.M_SP_TB_1, Cause.SPONTANEOUS, ca))
        assert objects(dp, 8)[0][0] == IOA_BREAKER and objects(dp, 8)[0][1][0] == 0x01
        assert objects(sp, 8)[0][0] == IOA_LOCK and objects(sp, 8)[0][1][0] == 0x01

        assert bmi.clock_sync(ca)
        assert bmi.wait_received(is_(TypeId.C_CS_NA_1, Cause.ACTIVATION_CON, ca))
        assert len(updc.clock_syncs) == 1


def test_raw_captures_are_byte_equal_at_both_ends(pairs: list[Pair]) -> None:
    for updc, bmi in pairs:
        ca = updc.common_address
        assert bmi.interrogation(ca)
        assert bmi.clock_sync(ca)
        assert bmi.select_and_execute_breaker(ca, on=False)
        updc.toggle_lock()
        bmi.wait_received(is_(TypeId.M_ME_TF_1, Cause.SPONTANEOUS, ca), count=2)
    expected = {
        (TypeId.C_IC_NA_1, Cause.ACTIVATION_CON),
        (TypeId.M_ME_TF_1, Cause.INTERROGATED_BY_STATION),
        (TypeId.C_IC_NA_1, Cause.ACTIVATION_TERMINATION),
        (TypeId.C_CS_NA_1, Cause.ACTIVATION_CON),
        (TypeId.C_DC_NA_1, Cause.ACTIVATION_CON),
        (TypeId.C_DC_NA_1, Cause.ACTIVATION_TERMINATION),
        (TypeId.M_DP_TB_1, Cause.SPONTANEOUS),
        (TypeId.M_SP_TB_1, Cause.SPONTANEOUS),
        (TypeId.M_ME_TF_1, Cause.SPONTANEOUS),
    }
    for updc, bmi in pairs:
        # Both lists grow while we look; poll for a moment when they agree.
        assert wait_until(partial(settled, updc, bmi, expected), 2.0), expected - kinds(updc)
        assert {(a[0], a[2]) for a in bmi.sent_asdus()} == {
            (TypeId.C_IC_NA_1, 6),
            (TypeId.C_CS_NA_1, 6),
            (TypeId.C_DC_NA_1, 6),
        }
        # The APCI differs per direction but every frame is whole.
        for _, frame in updc.sent.snapshot() + bmi.received.snapshot():
            assert frame[0] == 0x68 and frame[1] == len(frame) - 2


def test_random_changes_are_reported() -> None:
    with UpdcSimulator("random", 21, sample_period=5.0, random_change_period=0.05, seed=3) as updc:
        with BmiSimulator("127.0.0.1", updc.port, [21], unmute_after=UNMUTE_AFTER) as bmi:
            assert bmi.wait_started(3.0)
            assert bmi.wait_received(
                lambda h: h.cause == Cause.SPONTANEOUS and h.type_id in (TypeId.M_DP_TB_1, TypeId.M_SP_TB_1),
                count=3,
                timeout=3.0,
            )


def test_init_all_interrogates_and_syncs_on_connect() -> None:
    with UpdcSimulator("init", 31, sample_period=5.0) as updc:
        with BmiSimulator("127.0.0.1", updc.port, [31], init=c104.Init.ALL, unmute_after=UNMUTE_AFTER) as bmi:
            assert bmi.wait_started(3.0)
            assert bmi.wait_received(is_(TypeId.C_IC_NA_1, Cause.ACTIVATION_TERMINATION, 31))
            assert bmi.wait_received(is_(TypeId.C_CS_NA_1, Cause.ACTIVATION_CON, 31))
            assert [AsduHeader.parse(a).common_address for a in bmi.sent_asdus()] == [0xFFFF, 0xFFFF]
            assert wait_until(lambda: len(updc.clock_syncs) == 1, 2.0)


def test_bmi_reconnects_when_the_updc_restarts() -> None:
    with UpdcSimulator("restart", 41, sample_period=0.2) as updc:
        with BmiSimulator("127.0.0.1", updc.port, [41], unmute_after=UNMUTE_AFTER) as bmi:
            assert bmi.wait_started(3.0)
            updc.stop()
            assert wait_until(lambda: not bmi.is_started, 2.0)
            started = time.monotonic()
            updc.start()  # same port
            # c104's client waits about 1 s before it reconnects.
            assert bmi.wait_started(5.0)
            assert time.monotonic() - started < 3.0
            assert bmi.wait_received(is_(TypeId.M_ME_TF_1, Cause.SPONTANEOUS, 41))


def test_periodic_cause_and_invalid_quality_options() -> None:
    with UpdcSimulator("options", 51, sample_period=0.1, loads=1, measurement_cause=c104.Cot.PERIODIC) as updc:
        updc.invalid_measurements = True
        with BmiSimulator("127.0.0.1", updc.port, [51], unmute_after=UNMUTE_AFTER) as bmi:
            assert bmi.wait_started(3.0)
            [sample, *_] = bmi.wait_received(is_(TypeId.M_ME_TF_1, Cause.PERIODIC, 51))
            assert [(ioa, e[4]) for ioa, e in objects(sample, 12)] == [
                (IOA_TOTAL_POWER, 0x80),  # QDS IV
                (load_power_ioa(1), 0x80),
            ]
