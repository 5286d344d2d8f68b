"""The trio driver of a link, with memory streams and a mock clock: timers fire at
exactly the virtual time the standard says, and no test waits for real."""

import trio
import trio.testing

from concentrator.iec104.apci import UFrame, UFunction, decode, encode_i, encode_u
from concentrator.iec104.link import AsduReceived, Link, LinkParams, Role
from tests.peers.session import LinkSession


async def read_frame(stream: trio.abc.ReceiveStream) -> object:
    header = await stream.receive_some(2)
    rest = b""
    while len(rest) < header[1]:
        rest += await stream.receive_some(header[1] - len(rest))
    return decode(header + rest)


async def test_t3_test_frame_then_t1_closes_the_session(autojump_clock: trio.testing.MockClock):
    ours, theirs = trio.testing.memory_stream_pair()
    session = LinkSession(ours, Link(Role.CONTROLLED, LinkParams(t1=15, t3=20)), lambda s, e: None, "test")
    async with trio.open_nursery() as nursery:
        ended: list[tuple[str, float]] = []

        async def run() -> None:
            reason = await session.run()
            ended.append((reason, trio.current_time()))

        nursery.start_soon(run)
        start = trio.current_time()
        assert await read_frame(theirs) == UFrame(UFunction.TESTFR_ACT)
        assert trio.current_time() - start == 20
    # Never answered: t1 later the session ended by itself.
    ((reason, at),) = ended
    assert reason.startswith("t1_expired: ") and at - start == 35


async def test_received_asdus_reach_the_handler_and_wake_flushes_replies(autojump_clock: trio.testing.MockClock):
    ours, theirs = trio.testing.memory_stream_pair()
    got: list[bytes] = []
    session = LinkSession(
        ours,
        Link(Role.CONTROLLED),
        lambda s, e: got.append(e.asdu) if isinstance(e, AsduReceived) else None,
        "test",
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await theirs.send_all(encode_u(UFunction.STARTDT_ACT))
        assert await read_frame(theirs) == UFrame(UFunction.STARTDT_CON)
        asdu = bytes.fromhex("0d0103006500010000000000c842")
        await theirs.send_all(encode_i(0, 0, asdu) + encode_i(1, 0, asdu))
        await trio.sleep(1)
        assert got == [asdu, asdu]
        session.link.send_asdu(asdu, trio.current_time())
        session.wake()
        frame = await read_frame(theirs)
        assert frame.send_seq == 0 and frame.recv_seq == 2 and frame.asdu == asdu  # type: ignore[attr-defined]
        session.close("done")
    assert session.close_reason == "done"


async def test_garbage_ends_the_session_with_the_reason(autojump_clock: trio.testing.MockClock):
    ours, theirs = trio.testing.memory_stream_pair()
    session = LinkSession(ours, Link(Role.CONTROLLED), lambda s, e: None, "test")
    await theirs.send_all(b"\x00\x01\x02")
    reason = await session.run()
    assert "start octet 0x00" in reason and session.closed
