"""The chaos soak's alert judge (bench/soak.py), from given faults and alerts: which
fault can explain which alert, and an alert no fault explains is said."""

from __future__ import annotations

from bench.soak import Fault, evaluate_alerts


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
