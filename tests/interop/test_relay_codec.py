"""The relay between peers on our own codec, over real loopback sockets.

These peers keep unconfirmed data the way lib60870 does, so they can show end-to-end
acknowledgement and no loss, which c104's peers cannot (see DESIGN.md).
"""

from __future__ import annotations

import pytest
import trio

from concentrator.iec104.apci import UFunction, encode_i, encode_u
from concentrator.iec104.asdu import AsduHeader
from concentrator.iec104.link import LinkParams
from concentrator.relay.driver import Relay
from tests.helpers import free_port, relay_config, wait_for
from tests.peers.codec_peers import CodecMaster, QueueingStation, counter_asdu, counter_of


# C_SC_NA_1 single command, activation, IOA 5000.
def command(ca: int) -> bytes:
    return bytes((45, 1, 6, 0)) + ca.to_bytes(2, "little") + (5000).to_bytes(3, "little") + b"\x81"


INTERROGATION_BROADCAST = bytes((100, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0, 20))


async def start_all(nursery: trio.Nursery, n_sites: int, **config_args: object) -> tuple[list[QueueingStation], Relay]:
    stations = [QueueingStation(101 + n) for n in range(n_sites)]
    ports = [await nursery.start(station.serve) for station in stations]
    relay = Relay(relay_config(ports, **config_args))  # type: ignore[arg-type]
    await nursery.start(relay.run)
    return stations, relay


async def connect_master(
    nursery: trio.Nursery, relay: Relay, params: LinkParams = LinkParams(), start: bool = True
) -> CodecMaster:
    master = CodecMaster(params)
    await nursery.start(
        lambda task_status: master.run("127.0.0.1", relay.listen_port, start=start, task_status=task_status)
    )
    return master


async def test_every_asdu_reaches_the_bmi_unchanged_and_is_confirmed_end_to_end():
    async with trio.open_nursery() as nursery:
        stations, relay = await start_all(nursery, 3)
        master = await connect_master(nursery, relay)
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        sent = {s.common_address: [] for s in stations}
        for n in range(200):
            for station in stations:
                station.enqueue(counter_asdu(station.common_address, n))
                sent[station.common_address].append(counter_asdu(station.common_address, n))
        await wait_for(lambda: len(master.received) == 600, what="600 ASDUs at the BMI")
        for ca, asdus in sent.items():
            assert [a for a in master.asdus() if a[4] == ca & 0xFF] == asdus  # byte-identical, in order
        await wait_for(lambda: all(s.confirmed_all for s in stations), what="every UPDC frame confirmed")
        nursery.cancel_scope.cancel()


async def test_site_frames_are_confirmed_only_after_the_bmi_confirms():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1)
        # The BMI confirms only after w = 100 frames or t2 = 1.5 s.
        master = await connect_master(nursery, relay, LinkParams(k=200, w=100, t1=3, t2=1.5))
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        for _ in range(5):
            station.enqueue_counter()
        await wait_for(lambda: len(master.received) == 5, what="5 ASDUs at the BMI")
        await trio.sleep(0.5)
        assert len(station.unconfirmed) == 5, "the relay confirmed frames the BMI had not confirmed"
        await wait_for(lambda: station.confirmed_all, timeout=5, what="confirmation after the BMI's t2")
        assert relay.sites[0].stats.last_ack_delay is not None and relay.sites[0].stats.last_ack_delay >= 1.0
        nursery.cancel_scope.cancel()


async def test_commands_reach_only_their_site_broadcast_each_once_unknown_ca_negative():
    async with trio.open_nursery() as nursery:
        stations, relay = await start_all(nursery, 4)
        master = await connect_master(nursery, relay)
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        master.send(command(103))
        master.send(INTERROGATION_BROADCAST)
        master.send(command(999))
        await wait_for(lambda: sum(len(s.received) for s in stations) == 5, what="5 ASDUs at the sites")
        await wait_for(lambda: len(master.received) == 1, what="the negative answer")
        for station in stations:
            expected = (
                [INTERROGATION_BROADCAST] if station.common_address != 103 else [command(103), INTERROGATION_BROADCAST]
            )
            assert station.received == expected
        (answer,) = master.asdus()
        header = AsduHeader.parse(answer)
        assert (header.cause, header.negative, header.common_address) == (46, True, 999)
        assert answer[:2] == command(999)[:2] and answer[3:] == command(999)[3:]
        await trio.sleep(0.2)
        assert sum(len(s.received) for s in stations) == 5  # nothing more arrived later
        nursery.cancel_scope.cancel()


async def test_bmi_off_the_allowlist_is_refused_with_a_reset():
    async with trio.open_nursery() as nursery:
        _, relay = await start_all(nursery, 1, allowed_peers=["10.1.0.10"])
        sock = trio.socket.socket()
        with trio.fail_after(5), pytest.raises(ConnectionResetError):
            # The relay resets at accept: the reset shows at connect or at the first read.
            await sock.connect(("127.0.0.1", relay.listen_port))
            await sock.send(encode_u(UFunction.STARTDT_ACT))
            await sock.recv(100)
        sock.close()
        assert relay.stats.uplink.refused == 1 and relay.active is None
        assert relay.stats.uplink.connections == 0
        nursery.cancel_scope.cancel()


async def test_garbage_from_one_site_closes_only_that_connection():
    async with trio.open_nursery() as nursery:
        stations, relay = await start_all(nursery, 3)
        master = await connect_master(nursery, relay)
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        # Site 2 sends a frame with a bad start octet on its connection.
        (bad,) = stations[1]._sessions
        await bad.stream.send_all(b"\x99\x04\x07\x00\x00\x00")
        await wait_for(lambda: relay.sites[1].stats.connects == 2, what="site 2 reconnected")
        assert relay.sites[1].stats.last_close_reason.startswith("bad_frame: start octet")
        for n in range(50):
            for station in stations:
                station.enqueue(counter_asdu(station.common_address, n))
        await wait_for(lambda: len(master.received) == 150, what="all sites flowing")
        assert relay.sites[0].stats.connects == 1 and relay.sites[2].stats.connects == 1
        assert relay.stats.uplink.connections == 1
        nursery.cancel_scope.cancel()


async def test_malformed_frame_from_the_bmi_closes_only_that_bmi_connection():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1)
        standby = await connect_master(nursery, relay, start=False)
        master = await connect_master(nursery, relay)
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        assert master.session is not None
        await master.session.stream.send_all(encode_i(0, 0, b"\x01\x01"))  # an ASDU too short for a CA
        await wait_for(lambda: relay.stats.uplink.open_connections == 1, what="the bad BMI connection closed")
        assert standby.session is not None and not standby.session.closed
        assert relay.stats.uplink.last_close_reason.startswith("malformed_asdu: ")
        assert relay.stats.uplink.disconnects["malformed_asdu"] == 1
        nursery.cancel_scope.cancel()


async def test_uplink_cut_mid_stream_loses_nothing_and_keeps_order():
    async with trio.open_nursery() as nursery:
        stations, relay = await start_all(nursery, 3)
        first = await connect_master(nursery, relay)
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        total = 3000

        async def produce(station: QueueingStation) -> None:
            for _ in range(total):
                station.enqueue_counter()
                await trio.sleep(0.0005)

        for station in stations:
            nursery.start_soon(produce, station)
        await wait_for(lambda: len(first.received) > 1000, what="traffic before the cut")
        assert first.session is not None
        first.session.close("cut")  # the uplink dies mid-stream, unconfirmed frames in flight
        await wait_for(lambda: relay.active is None, what="the relay to see the uplink gone")
        second = await connect_master(nursery, relay)
        await wait_for(
            lambda: all(s.confirmed_all and s._next_sequence == total for s in stations),
            timeout=30,
            what="everything confirmed",
        )
        await wait_for(lambda: len(first.received) + len(second.received) >= 3 * total, what="all delivered")
        k = LinkParams().k
        for station in stations:
            ca = station.common_address
            got_first = [counter_of(a)[1] for a in first.asdus() if counter_of(a)[0] == ca]
            got_second = [counter_of(a)[1] for a in second.asdus() if counter_of(a)[0] == ca]
            # Each connection sees the site's frames in order, without gaps.
            assert got_first == list(range(len(got_first)))
            assert got_second == list(range(got_second[0], total))
            # Nothing lost; duplicates only within what was unconfirmed at the cut (the
            # UPDC's k window).
            assert got_second[0] <= len(got_first)
            assert len(got_first) - got_second[0] <= k
        nursery.cancel_scope.cancel()


async def test_startdt_on_another_connection_moves_the_active_role_and_resends_in_flight():
    async with trio.open_nursery() as nursery:
        (station,), relay = await start_all(nursery, 1)
        # A confirms nothing before 100 frames or 10 s: frames stay in flight on A.
        a = await connect_master(nursery, relay, LinkParams(k=200, w=100, t1=15, t2=10))
        b = await connect_master(nursery, relay, LinkParams(t2=0.5), start=False)
        await wait_for(lambda: relay.sites[0].stats.state == "started", what="site started")
        for _ in range(5):
            station.enqueue_counter()
        await wait_for(lambda: len(a.received) == 5, what="5 ASDUs on A")
        assert b.session is not None
        b.session.link.start(trio.current_time())
        b.session.wake()
        await wait_for(lambda: len(b.received) == 5, what="the 5 unconfirmed ASDUs again on B")
        assert b.asdus() == a.asdus()
        assert relay.stats.uplink.requeued == 5
        station.enqueue_counter()
        await wait_for(lambda: len(b.received) == 6, what="new data on B")
        await wait_for(lambda: station.confirmed_all, what="B's confirmation reaching the site")
        # Ed. 2 as lib60870 does it: the previously active connection is closed.
        await wait_for(lambda: a.session is not None and a.session.closed, what="A closed")
        assert len(a.received) == 5 and relay.stats.uplink.disconnects["superseded"] == 1
        nursery.cancel_scope.cancel()


async def test_a_command_waits_for_a_site_still_connecting_but_not_beyond_its_t1():
    async with trio.open_nursery() as nursery:
        late, stale = QueueingStation(101), QueueingStation(102)
        ports = [free_port(), free_port()]
        relay = Relay(relay_config(ports, site={"t1": 1.0, "t2": 0.5}))
        await nursery.start(relay.run)
        master = await connect_master(nursery, relay)
        await master.started.wait()
        master.send(command(101))
        master.send(command(102))
        await trio.sleep(0.3)  # neither site listens yet
        await nursery.start(late.serve, ports[0])
        await wait_for(lambda: late.received == [command(101)], what="the command at the late site")
        await trio.sleep(1.0)  # the second site comes after its t1 has passed
        await nursery.start(stale.serve, ports[1])
        await wait_for(lambda: relay.sites[1].stats.state == "started", what="the stale site started")
        await trio.sleep(0.2)
        assert stale.received == [] and relay.sites[1].stats.dropped_down == 1
        assert relay.sites[0].stats.dropped_down == 0
        nursery.cancel_scope.cancel()
