"""Issue 10's two findings, over real loopback sockets, with peers on our own codec that
behave like lib60870 (c104 has no Ed. 2 single active connection):

1. switching the active BMI connection away and straight back, with every site
   streaming, crashes nothing, confirms nothing early, loses nothing, and data flows
   again at once (bench/handover.py runs it 100 times; CI runs it 5 times);
2. STOPDT from the BMI is confirmed only once the I-frames it had were confirmed.
"""

from __future__ import annotations

import trio

from bench.handover import handover
from concentrator.iec104.apci import UFrame, UFunction, decode, encode_s, encode_u
from concentrator.iec104.link import State
from tests.helpers import wait_for
from tests.interop.test_relay_codec import start_all


async def test_switch_away_and_back_with_twelve_sites_streaming():
    result = await handover(iterations=5, hold=0.3, sites=12, rate=50.0)
    assert result["failures"] == []
    assert result["crashes"] == 0 and result["early_confirmations"] == 0
    assert result["lost"] == 0 and result["drained"]
    assert result["superseded_closes"] == 10  # every switch closed the previously active connection
    assert result["site_reconnects"] == 0  # the hand-over never touches the sites
    assert result["first_new_asdu_after_switch_s"]["max"] < 1.0
    assert result["generated"] > 1000


async def read_frames(stream: trio.SocketStream, count: int) -> list:
    data = b""
    frames: list = []
    with trio.fail_after(5):
        while len(frames) < count:
            data += await stream.receive_some(4096)
            while len(data) >= 2 and len(data) >= data[1] + 2:
                frames.append(decode(data[: data[1] + 2]))
                data = data[data[1] + 2 :]
    return frames


async def test_stopdt_is_confirmed_only_after_the_bmi_confirmed_the_frames_in_flight():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1)
        bmi = await trio.open_tcp_stream("127.0.0.1", relay.listen_port)
        await bmi.send_all(encode_u(UFunction.STARTDT_ACT))
        assert await read_frames(bmi, 1) == [UFrame(UFunction.STARTDT_CON)]
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        for _ in range(3):
            station.enqueue_counter()
        frames = await read_frames(bmi, 3)
        assert [f.send_seq for f in frames] == [0, 1, 2]
        await bmi.send_all(encode_u(UFunction.STOPDT_ACT))
        with trio.move_on_after(0.5):
            early = await bmi.receive_some(4096)
            raise AssertionError(f"the relay answered STOPDT with frames unconfirmed: {early.hex()}")
        assert relay.core.active is not None
        assert relay.core.active.link.state is State.PENDING_UNCONFIRMED_STOPPED
        assert len(station.unconfirmed) == 3  # the UPDC is not confirmed either
        await bmi.send_all(encode_s(2))
        with trio.move_on_after(0.3):
            early = await bmi.receive_some(4096)
            raise AssertionError(f"STOPDT confirmed with one frame still unconfirmed: {early.hex()}")
        await bmi.send_all(encode_s(3))
        assert await read_frames(bmi, 1) == [UFrame(UFunction.STOPDT_CON)]
        # Confirmed end to end before the sites were disconnected for the stopped uplink.
        await wait_for(lambda: station.confirmed_all, what="the UPDC confirmed")
        await wait_for(lambda: relay.sites[0].stats.disconnects["uplink_not_started"] == 1, what="site closed")
        await bmi.aclose()
        nursery.cancel_scope.cancel()
