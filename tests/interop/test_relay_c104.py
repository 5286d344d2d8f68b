"""The relay between real c104 peers over loopback: 12 simulated UPDCs (c104 servers)
and a simulated BMI (c104 client). Raw callbacks at both ends give whole APDUs, so
byte identity is checked on frame[6:] of every I-frame."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import c104
import pytest
import trio

from concentrator.iec104.apci import UFunction, encode_u
from concentrator.iec104.asdu import AsduHeader
from concentrator.relay.driver import Relay
from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.points import IOA_BREAKER, free_tcp_port
from concentrator.sim.updc import UpdcSimulator
from tests.helpers import relay_config, wait_for

SITES = 12
FIRST_CA = 101
C_DC_NA_1, C_IC_NA_1, C_CS_NA_1, M_DP_TB_1 = 46, 100, 103, 31


@dataclass
class Rig:
    updcs: list[UpdcSimulator]
    relay: Relay
    nursery: trio.Nursery

    def bmi(self, cas: list[int] | None = None, init: c104.Init = c104.Init.NONE) -> BmiSimulator:
        bmi = BmiSimulator(
            "127.0.0.1", self.relay.listen_port, cas or [u.common_address for u in self.updcs], init=init
        )
        self._stack.callback(bmi.stop)
        return bmi.start()

    _stack: ExitStack


@pytest.fixture
def updcs() -> Iterator[list[UpdcSimulator]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(UpdcSimulator(f"site-{n + 1:02d}", FIRST_CA + n, sample_period=0.2, seed=n))
            for n in range(SITES)
        ]


@asynccontextmanager
async def rig(updcs: list[UpdcSimulator], **config_args: object) -> AsyncIterator[Rig]:
    with ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            relay = Relay(relay_config([u.port for u in updcs], **config_args))  # type: ignore[arg-type]
            await nursery.start(relay.run)
            yield Rig(updcs, relay, nursery, stack)
            nursery.cancel_scope.cancel()


async def started(bmi: BmiSimulator, relay: Relay) -> None:
    assert await trio.to_thread.run_sync(bmi.wait_started, 10.0), "the BMI never got started"
    await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="all sites started")


def by_ca(asdus: list[bytes]) -> dict[int, list[bytes]]:
    grouped: dict[int, list[bytes]] = {}
    for asdu in asdus:
        grouped.setdefault(AsduHeader.parse(asdu).common_address, []).append(asdu)
    return grouped


async def test_every_asdu_from_every_site_reaches_the_bmi_byte_identical(updcs: list[UpdcSimulator]):
    async with rig(updcs) as r:
        bmi = r.bmi(init=c104.Init.ALL)  # interrogation and clock sync on connect, like a real BMI
        await started(bmi, r.relay)

        # The interrogation's answer (breaker and lock among it) may come after a few
        # samples, and after a site that connected late got the interrogation.
        def complete(asdus: list[bytes]) -> bool:
            return len(asdus) >= 15 and {36, 31, 30} <= {a[0] for a in asdus}

        await wait_for(
            lambda: all(complete(by_ca(bmi.received_asdus()).get(u.common_address, [])) for u in updcs),
            what="15 ASDUs from every site at the BMI, the interrogation's answer among them",
        )
        received = by_ca(bmi.received_asdus())
        for updc in updcs:
            sent = updc.sent_asdus()
            got = received[updc.common_address]
            # Everything the BMI got from this site is what the site sent, byte for
            # byte and in order; at most the last few are still on their way.
            assert got == sent[: len(got)], f"{updc.name}: relayed ASDUs differ from what it sent"
            assert len(sent) - len(got) <= 12
            types = {AsduHeader.parse(a).type_id for a in got}
            assert {36, 31, 30} <= types, f"{updc.name}: measurements, breaker and lock expected, got {types}"


async def test_select_and_execute_reaches_only_the_addressed_site(updcs: list[UpdcSimulator]):
    async with rig(updcs) as r:
        bmi = r.bmi()
        await started(bmi, r.relay)
        target = updcs[4]
        assert target.breaker_closed
        assert await trio.to_thread.run_sync(bmi.select_and_execute_breaker, target.common_address, False)
        assert not target.breaker_closed and len(target.executed_commands) == 1
        for other in updcs:
            if other is not target:
                assert not any(a[0] == C_DC_NA_1 for a in other.received_asdus()), f"{other.name} got a command"
        # The breaker's new position comes back spontaneously, time-tagged.
        await wait_for(
            lambda: any(
                a[0] == M_DP_TB_1
                and AsduHeader.parse(a).common_address == target.common_address
                and int.from_bytes(a[6:9], "little") == IOA_BREAKER
                and AsduHeader.parse(a).cause == 3
                for a in bmi.received_asdus()
            ),
            what="the breaker change at the BMI",
        )


async def test_broadcast_interrogation_and_clock_sync_reach_each_site_once(updcs: list[UpdcSimulator]):
    async with rig(updcs) as r:
        bmi = r.bmi()
        await started(bmi, r.relay)
        assert await trio.to_thread.run_sync(bmi.interrogation)
        assert await trio.to_thread.run_sync(bmi.clock_sync)
        for updc in updcs:
            kinds = [a[0] for a in updc.received_asdus()]
            assert kinds.count(C_IC_NA_1) == 1 and kinds.count(C_CS_NA_1) == 1, f"{updc.name}: {kinds}"
        # Each station confirmed with its own CA (c104 answers a broadcast that way).
        confirmations = [AsduHeader.parse(a) for a in bmi.received_asdus() if a[0] == C_IC_NA_1]
        assert sorted(h.common_address for h in confirmations if h.cause == 7) == [u.common_address for u in updcs]


async def test_unknown_common_address_is_answered_with_cause_46(updcs: list[UpdcSimulator]):
    async with rig(updcs) as r:
        bmi = r.bmi([u.common_address for u in updcs] + [999])
        await started(bmi, r.relay)
        assert not await trio.to_thread.run_sync(bmi.select_and_execute_breaker, 999, True)
        answers = [AsduHeader.parse(a) for a in bmi.received_asdus() if AsduHeader.parse(a).common_address == 999]
        assert answers and all(h.cause == 46 and h.negative for h in answers)
        assert r.relay.stats.uplink.negative_answers == len(answers)
        assert not any(a[0] == C_DC_NA_1 for u in updcs for a in u.received_asdus())


async def test_a_site_restarting_leaves_the_other_eleven_flowing(updcs: list[UpdcSimulator]):
    async with rig(updcs) as r:
        bmi = r.bmi()
        await started(bmi, r.relay)
        restarting = updcs[6]
        await trio.to_thread.run_sync(restarting.stop)
        await wait_for(lambda: r.relay.sites[6].stats.state != "started", what="the relay to see site 7 gone")
        before = by_ca(bmi.received_asdus())
        others = [u for u in updcs if u is not restarting]
        await wait_for(
            lambda: all(
                len(by_ca(bmi.received_asdus()).get(u.common_address, [])) >= len(before.get(u.common_address, [])) + 5
                for u in others
            ),
            what="5 more ASDUs from each of the other 11",
        )
        assert all(r.relay.sites[n].stats.connects == 1 for n in range(SITES) if n != 6)
        await trio.to_thread.run_sync(restarting.start)
        await wait_for(lambda: r.relay.sites[6].stats.state == "started", what="site 7 reconnected and started")
        count = len(by_ca(bmi.received_asdus()).get(restarting.common_address, []))
        await wait_for(
            lambda: len(by_ca(bmi.received_asdus()).get(restarting.common_address, [])) > count + 3,
            what="site 7 flowing again",
        )


async def test_a_site_sending_garbage_leaves_the_other_eleven_flowing(updcs: list[UpdcSimulator]):
    """Site 12 is replaced by a TCP server that answers STARTDT with garbage."""
    garbage_port = free_tcp_port()
    accepted = 0

    async def garbage_site(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.receive_some(6)  # STARTDT act
        await stream.send_all(encode_u(UFunction.STARTDT_CON) + b"\x68\x03garbage")
        await trio.sleep(5)

    ports = [u.port for u in updcs[:-1]] + [garbage_port]
    async with trio.open_nursery() as outer:
        await outer.start(trio.serve_tcp, garbage_site, garbage_port)
        with ExitStack() as stack:
            async with trio.open_nursery() as nursery:
                relay = Relay(relay_config(ports))
                await nursery.start(relay.run)
                r = Rig(updcs[:-1], relay, nursery, stack)
                bmi = r.bmi()
                assert await trio.to_thread.run_sync(bmi.wait_started, 10.0)
                await wait_for(lambda: relay.sites[11].stats.connects >= 2, what="the garbage site closed and retried")
                assert relay.sites[11].stats.disconnects["bad_frame"] >= 1
                assert "length 3" in relay.sites[11].stats.last_close_reason
                before = by_ca(bmi.received_asdus())
                await wait_for(
                    lambda: all(
                        len(by_ca(bmi.received_asdus()).get(u.common_address, []))
                        >= len(before.get(u.common_address, [])) + 5
                        for u in updcs[:-1]
                    ),
                    what="5 more ASDUs from each of the other 11",
                )
                assert all(relay.sites[n].stats.connects == 1 for n in range(11))
                assert relay.stats.uplink.connections == 1
                nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert accepted >= 2


async def test_a_bmi_off_the_allowlist_is_refused(updcs: list[UpdcSimulator]):
    async with rig(updcs[:1], allowed_peers=["10.1.0.10", "10.2.0.10"]) as r:
        # MUTED: c104 would otherwise send STARTDT on its own; the relay must close the
        # connection before any IEC 104 exchange, whatever the client sends.
        bmi = r.bmi([FIRST_CA], init=c104.Init.MUTED)
        await wait_for(lambda: r.relay.stats.uplink.refused >= 2, what="two refused connection attempts")
        assert r.relay.stats.uplink.connections == 0 and r.relay.active is None
        assert not bmi.is_started
        assert r.relay.sites[0].stats.state == "connected"  # never started without a BMI
