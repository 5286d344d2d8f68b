"""Issue 29 item 4 over real sockets: the relay's own answers (cause 46, unknown CA)
follow the connection whose commands they answer. A started BMI connection floods
commands for an unknown CA and reads nothing; another connection takes the started
role: it gets the UPDC's data, and none of the answers to the other one's commands
(on main it got them all). The rule and its reason: README, "IEC 104 Ed. 2 redundancy"."""

from __future__ import annotations

import trio

from concentrator.iec104.apci import UFrame, UFunction, encode_i, encode_u
from tests.helpers import wait_for
from tests.interop.test_relay_codec import connect_master, start_all
from tests.interop.test_relay_ed2 import read_frames
from tests.peers.codec_peers import counter_of

COMMANDS = 200
UNKNOWN_CA = 999
# A single command (type 45) for CA 999, IOA 5000, activation.
COMMAND = bytes((45, 1, 6, 0)) + UNKNOWN_CA.to_bytes(2, "little") + (5000).to_bytes(3, "little") + b"\x81"


async def test_answers_to_a_superseded_connections_commands_do_not_reach_the_new_one():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1)
        flooder = await trio.open_tcp_stream("127.0.0.1", relay.listen_port)
        await flooder.send_all(encode_u(UFunction.STARTDT_ACT))
        assert await read_frames(flooder, 1) == [UFrame(UFunction.STARTDT_CON)]
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        await flooder.send_all(b"".join(encode_i(n, 0, COMMAND) for n in range(COMMANDS)))  # and reads nothing
        await wait_for(lambda: relay.stats.uplink.negative_answers == COMMANDS, what="every command answered")
        for _ in range(3):
            station.enqueue_counter()  # the UPDC's data, queued behind the answers
        good = await connect_master(nursery, relay)
        await wait_for(lambda: len(good.received) >= 3, what="the UPDC's data on the new connection")
        await trio.sleep(0.3)  # anything else that was going to come
        assert [a for a in good.asdus() if a[2] & 0x3F == 46] == []
        assert [counter_of(a) for a in good.asdus()] == [(101, 0), (101, 1), (101, 2)]
        assert relay.stats.uplink.answers_dropped == COMMANDS  # the flooder confirmed none
        await wait_for(lambda: station.confirmed_all, what="the UPDC's data confirmed end to end")
        await flooder.aclose()
        nursery.cancel_scope.cancel()
