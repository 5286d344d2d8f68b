"""The detection rules, sans-I/O: given event sequences with injected wall time, which
incidents open (start) and are restored (end). Each rule has must-open and must-not-open
cases; time advances only through `advance`, which runs every deadline the detector
announces, in order, as the incident process's ticker would."""

from __future__ import annotations

from typing import Any

import pytest

from concentrator.incidents.detector import BMI, Detector, Kind, LinkState, Opened, Restored
from concentrator.sim.points import float_measurements, single_point

from .conftest import end_of_init, incidents_config

T0 = 1_800_000_000.0  # 2027-01-15, a Friday


class Clock:
    """Drives a detector: events at given times, every announced deadline in between."""

    def __init__(self, **config: Any) -> None:
        self.now = T0
        self.detector = Detector(incidents_config(**config), T0)
        self.actions: list[Opened | Restored] = []
        self._collect()

    def _collect(self) -> None:
        while (action := self.detector.next_action()) is not None:
            self.actions.append(action)

    def advance(self, to: float) -> None:
        while (deadline := self.detector.get_timer()) is not None and deadline <= T0 + to:
            self.now = max(self.now, deadline)
            self.detector.handle_timer(self.now)
            self._collect()
        self.now = max(self.now, T0 + to)
        self.detector.handle_timer(self.now)
        self._collect()

    def link(self, at: float, site: str | None, state: LinkState, detail: str = "") -> None:
        self.advance(at)
        self.detector.link(site, state, detail, T0 + at)
        self._collect()

    def paths(self, at: float, site: str, all_down: bool) -> None:
        self.advance(at)
        self.detector.paths(site, all_down, T0 + at)
        self._collect()

    def asdu(self, at: float, site: str, asdu: bytes) -> None:
        self.advance(at)
        self.detector.asdu(site, asdu, T0 + at)
        self._collect()

    def up(self, at: float, site: str = "north") -> None:
        """The site connected and started (and the BMI, so that it opens nothing)."""
        self.link(at, site, LinkState.CONNECTED, "10.1.1.1:2404")
        self.link(at, site, LinkState.STARTED)

    def opened(self, kind: Kind | None = None) -> list[tuple[str, Kind, float]]:
        return [(a.site, a.kind, a.start - T0) for a in self.actions
                if isinstance(a, Opened) and (kind is None or a.kind is kind)]  # fmt: skip

    def restored(self, kind: Kind | None = None) -> list[tuple[str, Kind, float]]:
        return [(a.site, a.kind, a.end - T0) for a in self.actions
                if isinstance(a, Restored) and (kind is None or a.kind is kind)]  # fmt: skip

    def opened_at(self) -> list[float]:
        return [a.detected - T0 for a in self.actions if isinstance(a, Opened)]


def both_up(clock: Clock, at: float = 1.0) -> None:
    clock.link(at, None, LinkState.STARTED, "BMI 10.0.1.1")
    clock.up(at, "north")
    clock.up(at, "south")


def measure(at: float, *, invalid: bool = False, ioa: int = 1001, late: float = 0.0) -> bytes:
    return float_measurements(101, [(ioa, 5.0)], T0 + at - late, invalid=invalid)


# ---------------------------------------------------------------------- unreachable


def test_unreachable_opens_after_the_grace_with_the_start_of_the_silence() -> None:
    clock = Clock()
    both_up(clock)
    clock.asdu(99.5, "north", measure(99.5))
    # t3 (20 s) after the last frame the relay tested the link, t1 (15 s) later it gave up.
    clock.link(134.5, "north", LinkState.DISCONNECTED, "t1_expired: no confirmation in 15 s")
    # The link was silent since 99.5 s: that is the start; the grace ran out long ago.
    assert clock.opened() == [("north", Kind.UNREACHABLE, 99.5)]
    clock.link(160.0, "north", LinkState.CONNECTED, "10.1.1.1:2404")
    clock.link(160.1, "north", LinkState.STARTED)
    clock.advance(169.0)
    assert clock.restored() == []  # the recovery hold (10 s) is not over
    clock.advance(171.0)
    assert clock.restored() == [("north", Kind.UNREACHABLE, 160.0)]
    assert len(clock.opened()) == 1


def test_a_quiet_updc_timed_out_is_unreachable_from_t3_plus_t1_before_at_most() -> None:
    clock = Clock()
    both_up(clock)
    clock.asdu(10.0, "north", measure(10.0))  # then quiet for long: it sends on change only
    clock.link(1000.0, "north", LinkState.DISCONNECTED, "t1_expired: no confirmation in 15 s")
    clock.advance(1100.0)
    assert clock.opened(Kind.UNREACHABLE) == [("north", Kind.UNREACHABLE, 965.0)]


def test_both_paths_down_opens_at_the_grace_even_with_the_connection_still_open() -> None:
    clock = Clock()
    both_up(clock)
    clock.paths(100.0, "north", True)
    clock.advance(119.9)
    assert clock.opened() == []
    clock.advance(120.0)
    assert clock.opened() == [("north", Kind.UNREACHABLE, 100.0)]
    assert clock.opened_at() == [120.0]
    clock.paths(160.0, "north", False)
    clock.advance(200.0)
    assert clock.restored() == [("north", Kind.UNREACHABLE, 160.0)]


def test_a_primary_failover_inside_20_s_opens_nothing() -> None:
    clock = Clock()
    both_up(clock)
    # The relay lost the connection during the switch and reconnected 8 s later.
    clock.link(100.0, "north", LinkState.DISCONNECTED, "t1_expired: no confirmation in 15 s")
    clock.link(108.0, "north", LinkState.CONNECTED, "10.1.1.1:2404")
    clock.link(108.1, "north", LinkState.STARTED)
    # Both paths down for 19.9 s: still inside footnote 2's tolerance.
    clock.paths(200.0, "north", True)
    clock.paths(219.9, "north", False)
    clock.advance(1000.0)
    assert clock.actions == []


def test_a_site_that_never_connects_opens_from_the_start_of_the_watch() -> None:
    clock = Clock()
    clock.link(1.0, None, LinkState.STARTED, "BMI")
    clock.up(5.0, "south")
    clock.advance(30.0)
    assert clock.opened() == [("north", Kind.UNREACHABLE, 0.0)]


def test_flapping_is_merged_into_one_incident() -> None:
    clock = Clock()
    both_up(clock)
    clock.link(100.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
    clock.up(160.0)
    clock.link(165.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")  # inside the hold
    clock.up(200.0)
    clock.advance(300.0)
    assert clock.opened() == [("north", Kind.UNREACHABLE, 100.0)]
    assert clock.restored() == [("north", Kind.UNREACHABLE, 200.0)]


# ---------------------------------------------------------------------- restart


def test_an_end_of_initialisation_is_a_restart_at_once() -> None:
    clock = Clock()
    both_up(clock)
    clock.asdu(50.0, "north", end_of_init())
    assert clock.opened() == [("north", Kind.RESTART, 50.0)]
    clock.advance(100.0)
    assert clock.restored() == [("north", Kind.RESTART, 50.0)]


def test_a_connection_reset_by_the_updc_is_a_restart_until_it_is_started_again() -> None:
    clock = Clock()
    both_up(clock)
    clock.link(50.0, "north", LinkState.DISCONNECTED, "connection_error: ConnectionResetError(104, 'reset')")
    assert clock.opened() == [("north", Kind.RESTART, 50.0)]
    clock.up(55.0)
    clock.advance(100.0)
    assert clock.restored() == [("north", Kind.RESTART, 55.0)]
    assert clock.opened(Kind.UNREACHABLE) == []  # back within 20 s


def test_a_connection_closed_or_timed_out_is_no_restart() -> None:
    clock = Clock()
    both_up(clock)
    clock.link(50.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
    clock.up(52.0)
    clock.link(60.0, "north", LinkState.DISCONNECTED, "t1_expired: no confirmation in 15 s")
    clock.up(62.0)
    clock.advance(200.0)
    assert clock.actions == []


# ---------------------------------------------------------------------- measures


def test_one_invalid_sample_inside_the_grace_opens_nothing() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 301, 4):
        clock.asdu(float(at), "north", measure(at, invalid=at == 100))
    clock.advance(300.0)
    assert clock.opened() == []


def test_measures_invalid_beyond_the_grace_open_from_the_first_invalid_sample() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 100, 4):
        clock.asdu(float(at), "north", measure(at))
    for at in range(100, 132, 4):
        clock.asdu(float(at), "north", measure(at, invalid=True))
    assert clock.opened() == [("north", Kind.MEASURES, 100.0)]
    assert clock.opened_at() == [120.0]
    for at in range(132, 160, 4):
        clock.asdu(float(at), "north", measure(at))
    assert clock.restored() == [("north", Kind.MEASURES, 132.0)]
    assert clock.restored()[0][2] == 132.0 and "invalid" in clock.actions[-1].proposed_en  # type: ignore[union-attr]


def test_measures_missing_while_the_site_talks_open_from_the_last_one() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 101, 4):
        clock.asdu(float(at), "north", measure(at))
    clock.asdu(110.0, "north", single_point(101, 2001, True, T0 + 110.0))  # the UPDC talks, without measures
    clock.advance(119.0)
    assert clock.opened() == []
    clock.advance(121.0)
    assert clock.opened() == [("north", Kind.MEASURES, 100.0)]


def test_a_site_silent_altogether_is_left_to_the_link_supervision_first() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 101, 4):
        clock.asdu(float(at), "north", measure(at))
    clock.link(135.0, "north", LinkState.DISCONNECTED, "t1_expired: no confirmation in 15 s")
    clock.advance(200.0)
    assert clock.opened() == [("north", Kind.UNREACHABLE, 100.0)]  # one incident, not two


def test_a_started_site_that_stays_silent_still_opens_measures_missing() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 101, 4):
        clock.asdu(float(at), "north", measure(at))
    clock.advance(154.0)
    assert clock.opened() == []
    clock.advance(156.0)
    assert clock.opened() == [("north", Kind.MEASURES, 100.0)]


def test_measures_are_not_judged_while_the_site_is_disconnected() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(4, 101, 4):
        clock.asdu(float(at), "north", measure(at))
    clock.link(101.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
    clock.up(115.0)
    clock.asdu(118.0, "north", measure(118.0))
    clock.advance(130.0)
    assert clock.actions == []


def test_listed_measures_are_watched_from_the_start() -> None:
    clock = Clock(sites={"north": {"measures": [1001]}})
    both_up(clock)
    clock.asdu(5.0, "north", measure(5.0, ioa=2002))  # not a watched IOA
    clock.advance(30.0)
    assert clock.opened() == [("north", Kind.MEASURES, 1.0)]


# ---------------------------------------------------------------------- skew


def test_time_tags_off_by_more_than_5_ms_past_the_grace_open() -> None:
    clock = Clock()
    both_up(clock)
    for at in range(100, 140, 4):  # 50 ms late, the clock of an instantaneous site
        clock.asdu(float(at), "north", single_point(101, 2001, True, T0 + at - 0.050))
    assert clock.opened() == [("north", Kind.SKEW, 100.0)]
    assert clock.opened_at() == [132.0]  # the first bad sample 30 s after the first
    for at in range(140, 160, 4):
        clock.asdu(float(at), "north", single_point(101, 2001, True, T0 + at - 0.001))
    assert clock.restored() == [("north", Kind.SKEW, 140.0)]


@pytest.mark.parametrize("case", ["single", "backlog", "emergency", "within"])
def test_time_tags_that_must_not_open(case: str) -> None:
    clock = Clock()
    both_up(clock)
    if case == "single":  # one old event, then good ones
        clock.asdu(100.0, "north", single_point(101, 2001, True, T0 + 40.0))
        for at in range(104, 200, 4):
            clock.asdu(float(at), "north", single_point(101, 2001, True, T0 + at))
    elif case == "backlog":  # old events re-sent right after a start
        clock.link(100.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
        clock.up(102.0)
        for at in range(103, 112):
            clock.asdu(float(at), "north", single_point(101, 2001, True, T0 + 90.0))
    elif case == "emergency":  # 5 ms is the instantaneous sites' limit; south is emergency
        for at in range(100, 200, 4):
            clock.asdu(float(at), "south", single_point(102, 2001, True, T0 + at - 0.5))
    else:  # 3 ms off: inside the limit
        for at in range(100, 200, 4):
            clock.asdu(float(at), "north", single_point(101, 2001, True, T0 + at - 0.003))
    clock.advance(300.0)
    assert clock.opened() == []


# ---------------------------------------------------------------------- BMI


def test_bmi_not_started_beyond_the_grace_opens_and_short_stops_do_not() -> None:
    clock = Clock()
    clock.link(5.0, None, LinkState.STARTED, "BMI 10.0.1.1")
    clock.up(5.0, "north")
    clock.up(5.0, "south")
    clock.link(100.0, None, LinkState.STOPPED, "BMI 10.0.1.1")
    clock.link(110.0, None, LinkState.STARTED, "BMI 10.0.1.2")
    clock.link(200.0, None, LinkState.STOPPED, "BMI 10.0.1.2")
    clock.advance(219.0)
    assert clock.opened() == []
    clock.advance(221.0)
    assert clock.opened() == [(BMI, Kind.BMI_LINK, 200.0)]
    clock.link(250.0, None, LinkState.STARTED, "BMI 10.0.1.1")
    clock.advance(300.0)
    assert clock.restored() == [(BMI, Kind.BMI_LINK, 250.0)]


# ---------------------------------------------------------------------- maintenance


def test_nothing_opens_inside_a_planned_maintenance_window() -> None:
    clock = Clock()
    both_up(clock)
    clock.detector.set_maintenance([("north", T0 + 90.0, T0 + 300.0)], T0 + 2.0)
    clock.link(100.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
    clock.asdu(150.0, "north", end_of_init())  # restarted during the work: planned too
    clock.up(250.0)
    clock.advance(400.0)
    assert clock.actions == []


def test_trouble_outlasting_the_window_opens_from_its_end() -> None:
    clock = Clock()
    both_up(clock)
    clock.detector.set_maintenance([("north", T0 + 90.0, T0 + 300.0)], T0 + 2.0)
    clock.link(100.0, "north", LinkState.DISCONNECTED, "peer_closed: closed by peer")
    clock.advance(319.0)
    assert clock.opened() == []
    clock.advance(321.0)
    assert clock.opened() == [("north", Kind.UNREACHABLE, 300.0)]


# ---------------------------------------------------------------------- restart of the appliance


def test_an_incident_left_open_stays_open_and_is_restored_when_the_updc_is_back() -> None:
    config = incidents_config()
    detector = Detector(config, T0, {("north", Kind.UNREACHABLE): T0 - 3600})
    detector.link(None, LinkState.STARTED, "BMI", T0 + 1)
    detector.link("north", LinkState.CONNECTED, "10.1.1.1:2404", T0 + 3)
    detector.link("north", LinkState.STARTED, "", T0 + 3)
    detector.link("south", LinkState.STARTED, "", T0 + 3)
    detector.handle_timer(T0 + 20)
    actions = []
    while (action := detector.next_action()) is not None:
        actions.append(action)
    assert [type(a) for a in actions] == [Restored]
    assert actions[0].end == T0 + 3  # type: ignore[union-attr]
    assert "07:00:00-08:00:03 UTC" in actions[0].proposed_en, actions[0].proposed_en  # type: ignore[union-attr]
