"""The c104 UPDC simulator plays the shedding's signals (annex A40 5.1.4): an opening command
sets the reclosing lock, the release command (C_SC_NA_1 ON on IOA 3002) clears it."""

import c104

from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.points import IOA_RELEASE_CMD, wait_until
from concentrator.sim.updc import UpdcSimulator


def test_opening_locks_and_the_release_unlocks() -> None:
    with UpdcSimulator("s", 301, sample_period=1.0) as updc:
        bmi = BmiSimulator("127.0.0.1", updc.port, [301])
        station = bmi.connection.get_station(common_address=301)
        release = station.add_point(io_address=IOA_RELEASE_CMD, type=c104.Type.C_SC_NA_1,
                                    command_mode=c104.CommandMode.SELECT_AND_EXECUTE)  # fmt: skip
        with bmi:
            assert bmi.wait_started(timeout=3.0)
            assert not updc.locked
            assert bmi.select_and_execute_breaker(301, on=False)
            assert not updc.breaker_closed and updc.locked
            release.value = True
            # c104's client misses a select confirmation that arrives before it waits (about
            # 1 % on loopback, more on a loaded machine) and then never executes: send the
            # release again (idempotent) rather than read that as the simulator's failure.
            for _ in range(3):
                release.transmit(cause=c104.Cot.ACTIVATION)
                if wait_until(lambda: not updc.locked, 3.0):
                    break
            assert not updc.locked
            assert not updc.breaker_closed  # the release unlocks; reclosing is the holder's act
