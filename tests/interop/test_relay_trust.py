"""Issue 19, relay side, over real loopback sockets: a site speaks only for its own
common addresses, and the uplink has a ceiling on connections."""

from __future__ import annotations

import socket

import pytest
import trio

from concentrator.iec104.link import LinkParams
from tests.helpers import wait_for
from tests.interop.test_relay_codec import connect_master, start_all
from tests.peers.codec_peers import counter_asdu, counter_of


async def test_a_site_sending_another_sites_ca_is_not_forwarded_and_is_counted():
    async with trio.open_nursery() as nursery:
        (honest, forger), relay = await start_all(nursery, 2)
        master = await connect_master(nursery, relay, LinkParams(t2=0.2))  # confirms soon
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        forger.enqueue(counter_asdu(honest.common_address, 999))  # CA 101 from the site owning 102
        forger.enqueue_counter()  # then its own data
        honest.enqueue_counter()
        await wait_for(lambda: len(master.received) == 2, what="the two honest ASDUs")
        await wait_for(lambda: forger.confirmed_all, what="the forger's frames confirmed in their turn")
        await trio.sleep(0.2)
        assert sorted(counter_of(a) for a in master.asdus()) == [(101, 0), (102, 0)]
        assert relay.sites[1].stats.foreign_ca == 1 and relay.sites[0].stats.foreign_ca == 0
        assert relay.sites[1].stats.state == "started"  # default: dropped, not disconnected
        nursery.cancel_scope.cancel()


async def test_foreign_ca_close_disconnects_only_that_site():
    async with trio.open_nursery() as nursery:
        (honest, forger), relay = await start_all(nursery, 2, uplink={"foreign_ca": "close"})
        master = await connect_master(nursery, relay)
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        forger.enqueue(counter_asdu(honest.common_address, 999))
        await wait_for(lambda: relay.sites[1].stats.disconnects["foreign_ca"] == 1, what="the forger closed")
        honest.enqueue_counter()
        await wait_for(lambda: len(master.received) == 1, what="the honest site still flowing")
        assert relay.sites[0].stats.connects == 1
        nursery.cancel_scope.cancel()


async def test_uplink_connections_beyond_the_ceiling_are_reset_and_the_bmi_keeps_flowing():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1, uplink={"max_connections": 2})
        master = await connect_master(nursery, relay)
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        second = socket.create_connection(("127.0.0.1", relay.listen_port))
        await wait_for(lambda: relay.stats.uplink.open_connections == 2, what="the second connection")
        third = trio.socket.socket()
        with trio.fail_after(5), pytest.raises(ConnectionResetError):
            await third.connect(("127.0.0.1", relay.listen_port))
            await third.recv(10)
        third.close()
        assert relay.stats.uplink.refused_by_reason == {"limit": 1}
        station.enqueue_counter()
        await wait_for(lambda: len(master.received) == 1, what="the BMI still flowing")
        second.close()
        nursery.cancel_scope.cancel()
