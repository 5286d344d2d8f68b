"""Hypothesis drives the relay core with random interleavings of site frames, BMI
confirmations, STARTDT/STOPDT on several BMI connections, disconnects, reconnects and
timer expiries, and checks the invariants after every step (tests/unit/core_lab.py):

- no site frame is confirmed to its site before the BMI confirmed the copy;
- nothing is lost: every site frame is confirmed by the BMI or still kept by its UPDC;
- per-site order on the uplink, with no gap;
- duplicates only of frames the BMI had not confirmed (or that the UPDC itself sent
  again after losing its connection);
- counts never go negative, and the queue's frames in flight equal the active link's;
- at most one started BMI connection, and it is the active one;
- a site's broadcast-CA confirmation (lib60870's answer to a broadcast clock sync, or one
  sent unsolicited) is forwarded only one for one with the broadcasts the relay wrote on
  that site connection;

and, when asked to settle with a started BMI and every site started, that everything
flows (every UPDC ends with nothing unconfirmed).

CI runs the profile "ci" (examples below). The long run: `HYPOTHESIS_PROFILE=long
HYPOTHESIS_EXAMPLES=30000 CORE_STEPS_FILE=steps.txt pytest this file` (30,000 examples,
2.7 million steps, no counter-example, 25 min on the shared 2-core machine).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from concentrator.iec104.errors import Cause
from concentrator.iec104.link import State
from tests.peers.codec_peers import counter_asdu

from .core_lab import BASE_CA, Lab, clock_sync_broadcast

settings.register_profile(
    "ci", max_examples=1000, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "20000")),
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

SITES = 3
conn_index = st.integers(min_value=0, max_value=20)


class RelayCoreMachine(RuleBasedStateMachine):
    @initialize(site_k=st.integers(min_value=1, max_value=5), uplink_k=st.integers(min_value=1, max_value=8))
    def setup(self, site_k: int, uplink_k: int) -> None:
        from concentrator.iec104.link import LinkParams

        self.lab = Lab(SITES, site_k, LinkParams(k=uplink_k, w=max(1, uplink_k * 2 // 3)))

    # ---------------------------------------------------------------- connections
    @rule(site=st.integers(0, SITES - 1))
    def connect_site(self, site: int) -> None:
        self.lab.connect_site(site)

    @rule(site=st.integers(0, SITES - 1))
    def site_unreachable(self, site: int) -> None:
        self.lab.refuse_site(site)

    @rule()
    def connect_bmi(self) -> None:
        if sum(b.open for b in self.lab.bmis) < 3:
            self.lab.connect_bmi()

    @rule(which=conn_index)
    def drop_connection(self, which: int) -> None:
        conns = sorted(self.lab.by_conn)
        if conns:
            self.lab.drop(conns[which % len(conns)])

    # ---------------------------------------------------------------- BMI
    def _bmi(self, which: int):  # type: ignore[no-untyped-def]
        open_bmis = [b for b in self.lab.bmis if b.open]
        return open_bmis[which % len(open_bmis)] if open_bmis else None

    @rule(which=conn_index)
    def bmi_startdt(self, which: int) -> None:
        if (bmi := self._bmi(which)) is not None:
            self.lab.bmi_start(bmi)

    @rule(which=conn_index)
    def bmi_stopdt(self, which: int) -> None:
        if (bmi := self._bmi(which)) is not None:
            self.lab.bmi_stop(bmi)

    @rule(which=conn_index, count=st.integers(1, 8))
    def bmi_confirms(self, which: int, count: int) -> None:
        if (bmi := self._bmi(which)) is not None:
            self.lab.bmi_confirm(bmi, count)

    @rule(which=conn_index, ca=st.sampled_from([BASE_CA, BASE_CA + 1, BASE_CA + SITES - 1, 65535, 999]))
    def bmi_command(self, which: int, ca: int) -> None:
        if (bmi := self._bmi(which)) is not None:
            self.lab.bmi_send(bmi, counter_asdu(ca, 10_000))

    @rule(which=conn_index, stamp=st.integers(0, 1000), at_once=st.booleans())
    def bmi_broadcast_clock_sync(self, which: int, stamp: int, at_once: bool) -> None:
        """The BMI synchronises every site's clock; `at_once`: the broadcast reaches the
        sites and their answers reach the relay now (else other steps come between)."""
        if (bmi := self._bmi(which)) is not None:
            self.lab.bmi_send(bmi, clock_sync_broadcast(stamp))
            if at_once:
                self.lab.deliver_to_core(bmi.conn)
                for station in self.lab.stations:
                    if station.conn is not None:
                        self.lab.deliver_to_peer(station.conn)
                        if station.conn is not None:
                            self.lab.deliver_to_core(station.conn)

    @rule(site=st.integers(0, SITES - 1), stamp=st.integers(0, 1000))
    def site_unsolicited_broadcast_answer(self, site: int, stamp: int) -> None:
        self.lab.answer(self.lab.stations[site], clock_sync_broadcast(stamp))

    # ---------------------------------------------------------------- data and time
    @rule(site=st.integers(0, SITES - 1), count=st.integers(1, 6))
    def site_data(self, site: int, count: int) -> None:
        self.lab.generate(site, count)

    @rule(which=conn_index, to_core=st.booleans())
    def deliver(self, which: int, to_core: bool) -> None:
        conns = sorted(self.lab.by_conn)
        if conns:
            conn = conns[which % len(conns)]
            (self.lab.deliver_to_core if to_core else self.lab.deliver_to_peer)(conn)

    @rule(seconds=st.sampled_from([0.05, 0.5, 3.0, 12.0, 16.0]))
    def time_passes(self, seconds: float) -> None:
        self.lab.advance(seconds)

    @precondition(lambda self: any(b.open for b in self.lab.bmis))
    @rule()
    def settle(self) -> None:
        lab = self.lab
        lab.settle()
        active = lab.core.active
        started = (
            all(s.link is not None and s.link.state is State.STARTED for s in lab.stations)
            and active is not None
            and any(b.open and b.conn == active.id and b.link.state is State.STARTED for b in lab.bmis)
        )
        if started:
            for station in lab.stations:
                assert not station.waiting and not station.unconfirmed, (
                    f"site {station.ca}: {len(station.waiting)} waiting, {len(station.unconfirmed)} "
                    "unconfirmed after settling with everything started"
                )

    @invariant()
    def invariants_hold(self) -> None:
        if hasattr(self, "lab"):
            self.lab.check()
            self.steps = getattr(self, "steps", 0) + 1

    def teardown(self) -> None:
        # For the report of a long run: CORE_STEPS_FILE collects the steps of each example.
        if (path := os.environ.get("CORE_STEPS_FILE")) and hasattr(self, "steps"):
            with open(path, "a") as f:
                f.write(f"{self.steps}\n")


RelayCoreMachine.TestCase.settings = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
TestRelayCore = RelayCoreMachine.TestCase


def test_the_machine_catches_a_core_that_confirms_early(monkeypatch):
    """The invariants must say NOT OK: a core that, on a hand-over, confirms the frames in
    flight to their sites instead of sending them again (the kind of bug issue 10 found)
    is caught."""
    from hypothesis.stateful import run_state_machine_as_test

    from concentrator.relay.core import RelayCore, SiteConn

    from .core_lab import InvariantBroken

    def confirm_in_flight(self, conn, now):  # type: ignore[no-untyped-def]
        previous = self.active
        if previous is not None:
            for item in self.queue.confirmed(self.queue.in_flight):
                if isinstance(item.origin, SiteConn) and not item.origin.closed:
                    item.origin.outstanding -= 1
                    item.origin.link.acknowledge(1, now)
                    self._touch(item.origin)
            self.active = conn
            self._close(previous, Cause.SUPERSEDED, "mutant", now)
            self._pump(now)
        else:
            original(self, conn, now)

    original = RelayCore._activate
    monkeypatch.setattr(RelayCore, "_activate", confirm_in_flight)
    with pytest.raises(InvariantBroken, match="confirmed before the BMI confirmed it"):
        run_state_machine_as_test(
            RelayCoreMachine,
            # No shrinking: finding it is the point, and CI time counts.
            settings=settings(
                max_examples=3000, stateful_step_count=60, deadline=None, database=None, phases=[Phase.generate]
            ),
        )


def test_the_machine_catches_a_core_that_forwards_unsolicited_broadcast_answers(monkeypatch):
    """NOT OK too: a core that takes every broadcast-CA ASDU from a site for an answer
    (the rule of issue 25 turned into "let CA 65535 through") is caught."""
    from hypothesis.stateful import run_state_machine_as_test

    from concentrator.relay.broadcasts import BroadcastLedger

    from .core_lab import InvariantBroken

    monkeypatch.setattr(BroadcastLedger, "answers", lambda self, asdu: True)
    with pytest.raises(InvariantBroken, match="broadcast answers forwarded from one connection"):
        run_state_machine_as_test(
            RelayCoreMachine,
            settings=settings(
                max_examples=3000, stateful_step_count=60, deadline=None, database=None, phases=[Phase.generate]
            ),
        )
