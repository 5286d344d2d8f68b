"""Issue 11, what is done of it: a hostile site harms only its own connection."""

from __future__ import annotations

from functools import partial

import trio

from concentrator.iec104.apci import UFunction, encode_i, encode_u
from concentrator.relay.driver import Relay
from tests.helpers import relay_config, wait_for
from tests.interop.test_relay_codec import connect_master
from tests.peers.codec_peers import QueueingStation, counter_asdu


async def greedy_site(k: int, stream: trio.SocketStream) -> None:
    """Answers STARTDT, then sends k + 1 I-frames without waiting for any confirmation."""
    data = b""
    while encode_u(UFunction.STARTDT_ACT) not in data:
        data += await stream.receive_some(100)
    await stream.send_all(encode_u(UFunction.STARTDT_CON))
    await stream.send_all(b"".join(encode_i(n, 0, counter_asdu(102, n)) for n in range(k + 1)))
    await trio.sleep_forever()


async def test_a_site_sending_more_than_k_unconfirmed_frames_closes_only_itself():
    async with trio.open_nursery() as nursery:
        honest = QueueingStation(101)
        port = await nursery.start(honest.serve)
        listeners = await nursery.start(partial(trio.serve_tcp, partial(greedy_site, 12), 0, host="127.0.0.1"))
        greedy_port = listeners[0].socket.getsockname()[1]
        relay = Relay(relay_config([port, greedy_port]))
        await nursery.start(relay.run)
        master = await connect_master(nursery, relay)
        await wait_for(lambda: relay.sites[1].stats.disconnects["too_many_unconfirmed"] >= 1, what="greedy closed")
        honest.enqueue_counter()
        await wait_for(lambda: any(a[4] == 101 for a in master.asdus()), what="the honest site still flowing")
        assert relay.sites[0].stats.connects == 1 and relay.sites[0].stats.state == "started"
        # What the greedy site sent within its window was forwarded; the (k+1)-th was not.
        assert sum(1 for a in master.asdus() if a[4] == 102) <= 12 * relay.sites[1].stats.connects
        nursery.cancel_scope.cancel()
