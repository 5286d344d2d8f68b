"""Issue 25, item 1, over real loopback sockets: UPDCs that answer broadcasts the way
lib60870 does (confirmation and termination keep CA 65535) are heard by the BMI, byte
for byte; a broadcast-CA ASDU that answers nothing the BMI sent stays refused."""

from __future__ import annotations

import trio

from concentrator.iec104.link import LinkParams
from concentrator.relay.driver import Relay
from tests.helpers import relay_config, wait_for
from tests.interop.test_relay_codec import INTERROGATION_BROADCAST, connect_master
from tests.peers.codec_peers import Lib60870Station, with_cause

# C_CS_NA_1 to every station, activation, IOA 0, CP56Time2a 2026-12-07 16:30:00.000.
CLOCK_SYNC_BROADCAST = bytes((103, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0)) + bytes((0, 0, 30, 16, 7, 12, 26))


async def start_lib60870_sites(nursery: trio.Nursery, n_sites: int) -> tuple[list[Lib60870Station], Relay]:
    stations = [Lib60870Station(101 + n) for n in range(n_sites)]
    ports = [await nursery.start(station.serve) for station in stations]
    relay = Relay(relay_config(ports))
    await nursery.start(relay.run)
    return stations, relay


async def test_lib60870_answers_to_broadcasts_reach_the_bmi_byte_identical():
    async with trio.open_nursery() as nursery:
        stations, relay = await start_lib60870_sites(nursery, 3)
        master = await connect_master(nursery, relay, LinkParams(t2=0.2))
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        master.send(CLOCK_SYNC_BROADCAST)
        master.send(INTERROGATION_BROADCAST)
        # Per site: clock sync con, interrogation con, one single point, termination.
        await wait_for(lambda: len(master.received) == 12, what="every site's answers at the BMI")
        await wait_for(lambda: all(s.confirmed_all for s in stations), what="every answer confirmed end to end")
        for station in stations:
            assert station.answers == [
                with_cause(CLOCK_SYNC_BROADCAST, 7),
                with_cause(INTERROGATION_BROADCAST, 7),
                bytes((1, 1, 20, 0, station.common_address, 0, 1, 0, 0, 1)),
                with_cause(INTERROGATION_BROADCAST, 10),
            ]
        # Every answer of every site, byte for byte, nothing else (the broadcast-CA ones
        # are the same bytes from each site, so the multiset is what can be compared).
        assert sorted(master.asdus()) == sorted(a for s in stations for a in s.answers)
        assert all(s.stats.foreign_ca == 0 for s in relay.sites)
        nursery.cancel_scope.cancel()


async def test_broadcast_ca_asdus_that_answer_nothing_are_refused_and_counted():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_lib60870_sites(nursery, 1)
        master = await connect_master(nursery, relay, LinkParams(t2=0.2))
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        # A confirmation of a clock sync nobody sent, and spontaneous data with CA 65535.
        station.enqueue(with_cause(CLOCK_SYNC_BROADCAST, 7))
        station.enqueue(bytes((1, 1, 3, 0, 0xFF, 0xFF, 1, 0, 0, 1)))
        await wait_for(lambda: station.confirmed_all, what="the refused frames confirmed in their turn")
        master.send(CLOCK_SYNC_BROADCAST)  # one real broadcast: one confirmation passes...
        await wait_for(lambda: len(master.received) == 1, what="the confirmation of the real broadcast")
        station.enqueue(with_cause(CLOCK_SYNC_BROADCAST, 7))  # ...and a second one does not
        station.enqueue(with_cause(INTERROGATION_BROADCAST, 10))  # nor a termination never due
        await wait_for(lambda: station.confirmed_all, what="the late frames confirmed in their turn")
        await trio.sleep(0.3)
        assert master.asdus() == [with_cause(CLOCK_SYNC_BROADCAST, 7)]
        assert relay.sites[0].stats.foreign_ca == 4
        assert relay.sites[0].stats.state == "started"
        nursery.cancel_scope.cancel()
