"""Invalid quality counted on real frames: c104 UPDCs, one sending its measurements
flagged invalid, through the relay. The relay's counts must equal what scapy's IEC 104
layer (a decoder independent of ours) reads in the frames the UPDCs sent."""

from __future__ import annotations

from contextlib import ExitStack

import c104
import trio
from scapy.contrib.scada.iec104 import IEC104_I_Message_SeqIOA, IEC104_I_Message_SingleIOA

from concentrator.relay.driver import Relay
from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.updc import UpdcSimulator
from tests.helpers import relay_config, wait_for

M_ME_TF_1 = 36
C_IC_NA_1 = 100


def scapy_counts(updc: UpdcSimulator) -> tuple[int, int, int]:
    """(objects, invalid objects, ASDUs with SQ = 1) in the M_ME_TF_1 I-frames the UPDC
    sent. c104 answers an interrogation with SQ = 1, its samples have SQ = 0."""
    objects = invalid = sequences = 0
    for asdu in updc.sent_asdus():
        if asdu[0] != M_ME_TF_1:
            continue
        sequence = bool(asdu[1] & 0x80)
        sequences += sequence
        layer = IEC104_I_Message_SeqIOA if sequence else IEC104_I_Message_SingleIOA
        apdu = layer(b"\x68" + bytes((len(asdu) + 4,)) + bytes(4) + asdu)
        assert len(apdu.io) == asdu[1] & 0x7F
        objects += len(apdu.io)
        invalid += sum(int(io.iv) for io in apdu.io)
    return objects, invalid, sequences


def interrogation_terminated(bmi: BmiSimulator) -> set[int]:
    """CAs whose station interrogation ended (C_IC_NA_1, cause 10)."""
    return {a[4] | a[5] << 8 for a in bmi.received_asdus() if a[0] == C_IC_NA_1 and a[2] & 0x3F == 10}


async def test_invalid_measured_values_counted_as_sent() -> None:
    with ExitStack() as stack:
        updcs = [
            stack.enter_context(UpdcSimulator(f"site-{n + 1:02d}", 101 + n, sample_period=0.1, seed=n, loads=3))
            for n in range(2)
        ]
        updcs[0].invalid_measurements = True
        relay = Relay(relay_config([u.port for u in updcs]))
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            bmi = BmiSimulator("127.0.0.1", relay.listen_port, [101, 102], init=c104.Init.ALL)
            stack.callback(bmi.stop)
            bmi.start()
            # The interrogation (Init.ALL) may start late, after c104's unmute work-around:
            # wait for both answers to have ended (ACT_TERM) as well as for samples.
            await wait_for(lambda: interrogation_terminated(bmi) == {101, 102}, what="interrogation answered")
            await wait_for(lambda: all(s.stats.measured_values >= 40 for s in relay.sites), what="measurements")
            # Stopped, a UPDC has sent its last frame: once the relay sees the connection
            # gone it has read every frame the UPDC sent.
            for updc in updcs:
                await trio.to_thread.run_sync(updc.stop)
            await wait_for(lambda: all(s.stats.state != "started" for s in relay.sites), what="both sites gone")
            nursery.cancel_scope.cancel()
    invalid_site, valid_site = relay.sites[0].stats, relay.sites[1].stats
    objects, invalid, sequences = scapy_counts(updcs[0])
    # Every sample is flagged invalid; the interrogation answer (SQ = 1) is too if a
    # sample came before it, which is a race of c104's threads: only count both ways.
    assert invalid > 0 and sequences > 0
    assert (invalid_site.measured_values, invalid_site.invalid_measured_values) == (objects, invalid)
    objects, invalid, sequences = scapy_counts(updcs[1])
    assert objects > 0 and invalid == 0 and sequences > 0
    assert (valid_site.measured_values, valid_site.invalid_measured_values) == (objects, 0)
    assert invalid_site.malformed_measurements == valid_site.malformed_measurements == 0
