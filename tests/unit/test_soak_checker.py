"""The chaos soak's alert judge (bench/soak.py), from given faults and alerts: which
fault can explain which alert, and an alert no fault explains is said."""

from __future__ import annotations

from bench.soak import Fault, evaluate_alerts, foreign_effects


def fault(kind: str, target: str, start: float, end: float) -> Fault:
    f = Fault(0, kind, target, start, end - start)
    f.started, f.ended = start, end
    return f


def fired(alert: str, at: float, site: str | None = None, link: str | None = None) -> dict[str, object]:
    return {"alert": alert, "site": site, "link": link, "direction": None, "job": "x", "from": at, "to": at}


def unexplained(alerts: list[dict[str, object]], faults: list[Fault]) -> list[dict[str, object]]:
    return evaluate_alerts(alerts, faults, 0.0, 600.0, 0.0)["unexplained"]


def test_a_cut_uplink_explains_a_site_data_alert_on_any_site() -> None:
    cut = [fault("uplink_both_down", "uplink", 100.0, 130.0)]
    assert unexplained([fired("ConcentratorSiteNoMeasurements", 118.0, site="site10")], cut) == []


def test_a_site_alert_with_no_fault_or_long_after_one_is_unexplained() -> None:
    alert = fired("ConcentratorSiteNoMeasurements", 400.0, site="site10")
    assert unexplained([alert], []) == [alert]
    assert unexplained([alert], [fault("uplink_both_down", "uplink", 100.0, 130.0)]) == [alert]
    assert unexplained([alert], [fault("site_both_down", "site11", 390.0, 420.0)]) == [alert]


def test_an_uplink_fault_does_not_explain_a_slow_switch_on_a_site_link() -> None:
    alert = fired("ConcentratorSlowSwitch", 110.0, link="site10")
    assert unexplained([alert], [fault("uplink_primary_down", "uplink", 100.0, 130.0)]) == [alert]
    assert unexplained([alert], [fault("site_primary_down", "site10", 100.0, 130.0)]) == []


def foreign(site: str, start: float, end: float) -> Fault:
    f = fault("hostile_site", site, start, end)
    f.params = {"hostile": "foreign"}
    return f


def test_a_foreign_episode_explains_its_alert_until_its_queued_asdus_have_left() -> None:
    # Seed 28 at 2,602-2,642 s: the BMI was away until 2,680 s, the site's queued
    # foreign ASDUs left when the relay started it again, and the alert (the rule's
    # 5-minute window) lasted until 2,980 s: past the fault's end plus 330 s.
    alert = {**fired("ConcentratorSiteForeignCommonAddress", 2610.0, site="site21"), "to": 2980.0}
    episode = foreign("site21", 2602.6, 2642.4)
    assert unexplained([alert], [episode]) == [alert]
    foreign_effects([episode], {"site21": [[2603.0, 2642.0], [2680.5, 2680.6]]})
    assert episode.effects_until == 2680.6
    assert unexplained([alert], [episode]) == []


def test_foreign_asdus_sent_late_belong_to_the_last_episode_before_them_on_that_site() -> None:
    first, second, elsewhere = (
        foreign("site21", 100.0, 120.0),
        foreign("site21", 500.0, 520.0),
        foreign("site22", 100.0, 120.0),
    )
    foreign_effects([first, second, elsewhere], {"site21": [[100.5, 119.0], [150.0, 150.1], [500.5, 519.0]]})
    assert (first.effects_until, second.effects_until, elsewhere.effects_until) == (150.1, 519.0, None)
    # An alert of site22 is not explained by what site21 sent late.
    alert = {**fired("ConcentratorSiteForeignCommonAddress", 110.0, site="site22"), "to": 470.0}
    assert unexplained([alert], [first, second, elsewhere]) == [alert]
