"""The link state machine, two of them talking with no socket and with injected time."""

import pytest

from concentrator.iec104.apci import SFrame, UFrame, UFunction, decode, encode_i, encode_s, encode_u
from concentrator.iec104.errors import Cause
from concentrator.iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Link,
    LinkError,
    LinkFailed,
    LinkParams,
    Role,
    State,
    TestFrameConfirmed,
)

ASDU = bytes.fromhex("0d01030065000100000000c84200")  # M_ME_NC_1, CA 101


def asdu(n: int) -> bytes:
    return ASDU[:-5] + n.to_bytes(4, "little") + b"\x00"


def events(link: Link) -> list:
    out = []
    while (event := link.next_event()) is not None:
        out.append(event)
    return out


def frames(data: bytes) -> list:
    out, at = [], 0
    while at < len(data):
        length = data[at + 1] + 2
        out.append(decode(data[at : at + length]))
        at += length
    return out


def shuttle(a: Link, b: Link, now: float) -> None:
    """Carry bytes both ways until both are quiet."""
    while True:
        ab, ba = a.data_to_send(), b.data_to_send()
        if not ab and not ba:
            return
        b.receive_data(ab, now)
        a.receive_data(ba, now)


def started_pair(params: LinkParams = LinkParams(), manual_ack: bool = False) -> tuple[Link, Link]:
    master = Link(Role.CONTROLLING, params, manual_ack=manual_ack)
    station = Link(Role.CONTROLLED, params)
    master.start(0.0)
    shuttle(master, station, 0.0)
    assert events(master) == [DataTransferStarted()]
    assert events(station) == [DataTransferStarted()]
    return master, station


def test_startdt_and_stopdt_handshakes():
    master, station = started_pair()
    assert master.state is State.STARTED and station.state is State.STARTED
    master.stop(1.0)
    assert master.state is State.PENDING_STOPPED  # nothing unconfirmed: the act leaves at once
    shuttle(master, station, 1.0)
    assert master.state is State.STOPPED and station.state is State.STOPPED
    assert events(master) == [DataTransferStopped()] and events(station) == [DataTransferStopped()]


def test_asdus_cross_unchanged_and_w_triggers_an_s_frame():
    master, station = started_pair()
    for n in range(7):
        station.send_asdu(asdu(n), 0.0)
    master.receive_data(station.data_to_send(), 0.0)
    assert [e.asdu for e in events(master)] == [asdu(n) for n in range(7)]
    assert master.data_to_send() == b""  # below w: nothing yet
    station.send_asdu(asdu(7), 0.0)
    master.receive_data(station.data_to_send(), 0.0)
    assert frames(master.data_to_send()) == [SFrame(8)]


def test_t2_sends_the_acknowledgement_when_no_data_goes_back():
    master, station = started_pair()
    for n in range(3):
        station.send_asdu(asdu(n), 5.0)
    master.receive_data(station.data_to_send(), 5.0)
    assert master.get_timer() == pytest.approx(5.0 + 10.0)
    master.handle_timer(14.9)
    assert master.data_to_send() == b""
    master.handle_timer(15.0)
    assert frames(master.data_to_send()) == [SFrame(3)]
    assert master.unconfirmed_received == 0


def test_i_frame_going_back_carries_the_acknowledgement():
    master, station = started_pair()
    station.send_asdu(asdu(0), 0.0)
    master.receive_data(station.data_to_send(), 0.0)
    master.send_asdu(asdu(99), 0.1)
    (frame,) = frames(master.data_to_send())
    assert (frame.send_seq, frame.recv_seq) == (0, 1)
    station.receive_data(encode_i(0, 1, asdu(99)), 0.1)
    assert events(station)[0] == Acknowledged(1)


def test_k_window_stalls_and_reopens_on_acknowledgement():
    master, station = started_pair(LinkParams(k=12, w=8))
    for n in range(12):
        station.send_asdu(asdu(n), 0.0)
    assert not station.can_send and station.unacknowledged == 12
    with pytest.raises(LinkError):
        station.send_asdu(asdu(12), 0.0)
    master.receive_data(station.data_to_send(), 0.0)
    station.receive_data(master.data_to_send(), 0.0)  # the S-frame at w = 8
    assert events(station) == [Acknowledged(8)]
    assert station.can_send and station.unacknowledged == 4


def test_sequence_numbers_wrap_at_32767():
    master, station = started_pair(LinkParams(k=32767, w=1000, t2=5))
    received = 0
    for n in range(32767 + 5):
        station.send_asdu(asdu(n), 0.0)
        if n % 500 == 499:
            shuttle(master, station, 0.0)
            received += sum(isinstance(e, AsduReceived) for e in events(master))
            events(station)
    shuttle(master, station, 0.0)
    received += sum(isinstance(e, AsduReceived) for e in events(master))
    assert received == 32772
    assert station.send_seq == 4 and master.recv_seq == 4
    master.handle_timer(100.0)
    shuttle(master, station, 100.0)
    assert station.unacknowledged == 0 and master.unconfirmed_received == 0


def test_t1_expires_when_an_i_frame_is_not_confirmed():
    master, station = started_pair()
    station.send_asdu(asdu(0), 2.0)
    master.receive_data(station.data_to_send(), 2.0)  # master holds its ack (t2 = 10 s)
    station.handle_timer(16.9)
    assert station.state is State.STARTED
    station.handle_timer(17.0)
    assert station.state is State.CLOSED
    assert isinstance(events(station)[-1], LinkFailed)


def test_t3_sends_a_test_frame_and_its_confirmation_is_timed():
    master, station = started_pair()
    assert master.get_timer() == 20.0
    master.handle_timer(20.0)
    assert frames(master.data_to_send()) == [UFrame(UFunction.TESTFR_ACT)]
    station.receive_data(encode_u(UFunction.TESTFR_ACT), 20.0)
    assert frames(station.data_to_send()) == [UFrame(UFunction.TESTFR_CON)]
    master.receive_data(encode_u(UFunction.TESTFR_CON), 20.25)
    assert events(master) == [TestFrameConfirmed(pytest.approx(0.25))]


def test_unanswered_test_frame_fails_after_t1():
    master, _ = started_pair()
    master.handle_timer(20.0)
    master.data_to_send()
    master.handle_timer(34.9)
    assert master.state is State.STARTED
    master.handle_timer(35.0)
    assert master.state is State.CLOSED and "TESTFR" in str(master.failure)


def test_unanswered_startdt_fails_after_t1():
    master = Link(Role.CONTROLLING)
    master.start(1.0)
    master.handle_timer(16.0)
    assert master.state is State.CLOSED and "STARTDT" in str(master.failure)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (encode_i(1, 0, ASDU), Cause.SEQUENCE_ERROR),
        (encode_s(3), Cause.SEQUENCE_ERROR),
        (b"\x68\x04\x0f\x00\x00\x00", Cause.BAD_FRAME),
        (encode_u(UFunction.STARTDT_CON), Cause.UNEXPECTED_FRAME),
    ],
)
def test_peer_protocol_errors_become_link_failed(data, cause):
    master, _ = started_pair()
    master.receive_data(data, 1.0)
    (event,) = events(master)
    assert isinstance(event, LinkFailed) and event.cause is cause
    assert event.reason.startswith(cause.value + ": ")
    assert master.state is State.CLOSED and master.get_timer() is None
    master.receive_data(encode_u(UFunction.TESTFR_ACT), 1.0)  # ignored once closed
    assert master.data_to_send() == b""


def test_controlled_station_refuses_i_frames_before_startdt():
    station = Link(Role.CONTROLLED)
    station.receive_data(encode_i(0, 0, ASDU), 0.0)
    assert isinstance(events(station)[0], LinkFailed)


def test_controlled_station_refuses_controlling_only_frames():
    station = Link(Role.CONTROLLED)
    station.receive_data(encode_u(UFunction.STARTDT_CON), 0.0)
    assert station.state is State.CLOSED


def test_manual_ack_confirms_only_what_was_released():
    master, station = started_pair(manual_ack=True)
    for n in range(10):
        station.send_asdu(asdu(n), 0.0)
    master.receive_data(station.data_to_send(), 0.0)
    assert len(events(master)) == 10
    master.handle_timer(50.0)  # neither w nor t2 confirm anything
    assert SFrame(10) not in frames(master.data_to_send())
    master.acknowledge(3, 50.0)
    assert frames(master.data_to_send()) == [SFrame(3)]
    # A command going back carries only the released confirmation.
    master.send_asdu(asdu(100), 50.0)
    (frame,) = frames(master.data_to_send())
    assert frame.recv_seq == 3
    master.acknowledge(7, 51.0)
    assert frames(master.data_to_send()) == [SFrame(10)]
    with pytest.raises(LinkError):
        master.acknowledge(1, 52.0)


def test_controlled_station_confirms_stopdt_only_after_its_frames_are_confirmed():
    master, station = started_pair()
    for n in range(3):
        station.send_asdu(asdu(n), 0.0)
    master.receive_data(station.data_to_send(), 0.0)  # below w: master confirms nothing yet
    events(master)
    station.receive_data(encode_u(UFunction.STOPDT_ACT), 1.0)
    assert station.state is State.PENDING_UNCONFIRMED_STOPPED
    assert station.data_to_send() == b"" and not station.can_send
    assert events(station) == []
    station.receive_data(encode_s(2), 2.0)
    assert station.state is State.PENDING_UNCONFIRMED_STOPPED and station.data_to_send() == b""
    station.receive_data(encode_s(3), 3.0)
    assert events(station) == [Acknowledged(2), Acknowledged(1), DataTransferStopped()]
    assert frames(station.data_to_send()) == [UFrame(UFunction.STOPDT_CON)]
    assert station.state is State.STOPPED


def test_controlled_station_with_nothing_unconfirmed_confirms_stopdt_at_once():
    _, station = started_pair()
    station.receive_data(encode_u(UFunction.STOPDT_ACT), 1.0)
    assert frames(station.data_to_send()) == [UFrame(UFunction.STOPDT_CON)]
    assert station.state is State.STOPPED and events(station) == [DataTransferStopped()]


def test_pending_stopdt_still_runs_t1_on_the_unconfirmed_frames():
    master, station = started_pair()
    station.send_asdu(asdu(0), 0.0)
    station.receive_data(encode_u(UFunction.STOPDT_ACT), 1.0)
    station.handle_timer(15.0)
    assert station.state is State.CLOSED and station.failure is not None
    assert station.failure.cause is Cause.T1_EXPIRED


def test_controlling_station_sends_stopdt_only_after_its_frames_are_confirmed():
    master, station = started_pair()
    master.send_asdu(asdu(0), 0.0)
    master.stop(0.5)
    assert master.state is State.PENDING_UNCONFIRMED_STOPPED
    assert frames(master.data_to_send()) == [frames(encode_i(0, 0, asdu(0)))[0]]  # no STOPDT act yet
    master.receive_data(encode_s(1), 1.0)
    assert master.state is State.PENDING_STOPPED
    assert frames(master.data_to_send()) == [UFrame(UFunction.STOPDT_ACT)]
    master.receive_data(encode_u(UFunction.STOPDT_CON), 1.5)
    assert master.state is State.STOPPED
    assert events(master) == [Acknowledged(1), DataTransferStopped()]


def test_controlling_station_keeps_accepting_i_frames_until_stopdt_con():
    master, station = started_pair()
    master.stop(0.0)
    station.send_asdu(asdu(0), 0.0)  # crossed the STOPDT act on the wire
    master.receive_data(station.data_to_send(), 0.1)
    assert events(master) == [AsduReceived(asdu(0))]


def test_more_than_k_unconfirmed_i_frames_from_the_peer_is_a_protocol_error():
    master = Link(Role.CONTROLLING, LinkParams(k=3, w=2), manual_ack=True)
    master.start(0.0)
    master.receive_data(encode_u(UFunction.STARTDT_CON), 0.0)
    events(master)
    master.receive_data(b"".join(encode_i(n, 0, asdu(n)) for n in range(3)), 0.1)
    assert [type(e) for e in events(master)] == [AsduReceived] * 3
    master.receive_data(encode_i(3, 0, asdu(3)), 0.2)
    (event,) = events(master)
    assert isinstance(event, LinkFailed) and event.cause is Cause.TOO_MANY_UNCONFIRMED


def test_k_counts_only_frames_we_have_not_confirmed():
    master = Link(Role.CONTROLLING, LinkParams(k=3, w=2), manual_ack=True)
    master.start(0.0)
    master.receive_data(encode_u(UFunction.STARTDT_CON), 0.0)
    master.receive_data(b"".join(encode_i(n, 0, asdu(n)) for n in range(3)), 0.1)
    master.acknowledge(2, 0.1)
    master.receive_data(b"".join(encode_i(n, 0, asdu(n)) for n in range(3, 5)), 0.2)
    assert master.state is State.STARTED


@pytest.mark.parametrize("role", list(Role))
def test_every_u_frame_the_table_does_not_list_is_a_protocol_error(role):
    """Walk each reachable state and feed every U-frame that the table has no entry for."""
    from concentrator.iec104.link_states import TRANSITIONS, U_INPUT

    table = TRANSITIONS[role]
    for state in {s for s, _ in table} | {s for s, _ in table.values()}:
        for function, name in U_INPUT.items():
            if (state, name) in table:
                continue
            link = Link(role)
            link.state = state  # white-box: put the link in the state under test
            link.receive_data(encode_u(function), 0.0)
            assert link.state is State.CLOSED, (role, state, function)
            assert link.failure is not None and link.failure.cause is Cause.UNEXPECTED_FRAME


def test_a_burst_is_handled_in_turns_of_max_frames():
    _, station = started_pair()
    burst = encode_u(UFunction.TESTFR_ACT) * 25
    assert station.receive_data(burst, 1.0, max_frames=10) is True
    assert len(frames(station.data_to_send())) == 10
    assert station.receive_data(b"", 1.1, max_frames=10) is True
    assert station.receive_data(b"", 1.2, max_frames=10) is False
    assert len(frames(station.data_to_send())) == 15
    assert station.receive_data(encode_u(UFunction.TESTFR_ACT), 2.0, max_frames=1) is False  # nothing left
