"""Decision logic of the link manager, with time injected: instant and exact."""

from __future__ import annotations

import pytest

from netconfig.failover import (
    AllPathsDown,
    FailbackMode,
    FailbackRefused,
    Failover,
    FailoverParams,
    PathDown,
    PathUp,
    Reason,
    Role,
    Switched,
)

P, B = Role.PRIMARY, Role.BACKUP


def make(hold: float = 5.0, mode: FailbackMode = FailbackMode.AUTO, **kw: bool) -> Failover:
    return Failover(FailoverParams(misses=3, hold_time=hold, failback=mode), now=0.0, **kw)


def switches(events: list) -> list[Switched]:
    return [e for e in events if isinstance(e, Switched)]


def test_starts_on_primary_with_no_timer() -> None:
    fo = make()
    assert fo.active is P
    assert fo.get_timer() is None
    assert not fo.all_down


def test_starts_on_backup_when_primary_has_no_carrier() -> None:
    fo = make(primary_up=False)
    assert fo.active is B


def test_carrier_loss_on_active_switches_at_once() -> None:
    fo = make()
    events = fo.link_changed(P, False, now=1.25)
    assert events == [
        PathDown(P, Reason.CARRIER_DOWN, 1.25, 1.25),
        Switched(P, B, Reason.CARRIER_DOWN, 1.25, outage=0.0, detection=0.0),
    ]
    assert fo.active is B
    assert fo.history == switches(events)


def test_carrier_loss_on_standby_does_not_switch() -> None:
    fo = make()
    assert fo.link_changed(B, False, now=1.0) == [PathDown(B, Reason.CARRIER_DOWN, 1.0, 1.0)]
    assert fo.active is P


def test_repeated_link_event_is_ignored() -> None:
    fo = make()
    fo.link_changed(P, False, now=1.0)
    assert fo.link_changed(P, False, now=1.1) == []


def test_probe_losses_switch_on_the_nth_miss_only() -> None:
    fo = make()
    fo.probe_ok(P, now=0.1)
    assert fo.probe_missed(P, now=0.2) == []
    assert fo.probe_missed(P, now=0.3) == []
    events = fo.probe_missed(P, now=0.4)
    assert events[0] == PathDown(P, Reason.PROBE_LOSS, 0.4, last_good=0.1)
    sw = events[1]
    assert isinstance(sw, Switched) and sw.to is B and sw.reason is Reason.PROBE_LOSS
    assert sw.outage == pytest.approx(0.3)
    assert sw.detection == pytest.approx(0.3)


def test_an_answer_resets_the_miss_count() -> None:
    fo = make()
    fo.probe_missed(P, now=0.1)
    fo.probe_missed(P, now=0.2)
    fo.probe_ok(P, now=0.25)
    assert fo.probe_missed(P, now=0.3) == []
    assert fo.probe_missed(P, now=0.4) == []
    assert fo.active is P
    assert switches(fo.probe_missed(P, now=0.5))


def test_failback_after_hold_time_exactly() -> None:
    fo = make(hold=5.0)
    fo.link_changed(P, False, now=1.0)
    assert fo.link_changed(P, True, now=2.0) == []  # carrier alone is not enough
    assert fo.get_timer() is None
    assert fo.probe_ok(P, now=2.1) == [PathUp(P, 2.1)]
    assert fo.get_timer() == pytest.approx(7.1)
    assert fo.handle_timer(now=7.0) == []
    assert fo.active is B
    events = fo.handle_timer(now=7.1)
    assert events == [Switched(B, P, Reason.HOLD_ELAPSED, 7.1, outage=None, detection=None)]
    assert fo.active is P
    assert fo.get_timer() is None


def test_flapping_primary_restarts_the_hold_time() -> None:
    fo = make(hold=5.0)
    fo.link_changed(P, False, now=1.0)
    fo.link_changed(P, True, now=1.5)
    fo.probe_ok(P, now=1.6)
    assert fo.get_timer() == pytest.approx(6.6)
    # Flap before the hold time elapses: no fail-back, timer gone.
    assert fo.link_changed(P, False, now=4.0) == [PathDown(P, Reason.CARRIER_DOWN, 4.0, 4.0)]
    assert fo.get_timer() is None
    assert fo.handle_timer(now=6.6) == []
    fo.link_changed(P, True, now=5.0)
    fo.probe_ok(P, now=5.1)
    assert fo.get_timer() == pytest.approx(10.1)
    assert fo.active is B
    assert len(fo.history) == 1  # only the first failover happened


def test_manual_mode_stays_on_backup_until_asked() -> None:
    fo = make(hold=1.0, mode=FailbackMode.MANUAL)
    fo.link_changed(P, False, now=1.0)
    fo.link_changed(P, True, now=2.0)
    fo.probe_ok(P, now=2.0)
    assert fo.get_timer() is None
    assert fo.handle_timer(now=100.0) == []
    assert fo.active is B
    events = fo.request_failback(now=100.0)
    assert events == [Switched(B, P, Reason.MANUAL, 100.0, outage=None, detection=None)]
    assert fo.active is P


def test_manual_failback_refused_when_primary_unhealthy_or_already_active() -> None:
    fo = make(mode=FailbackMode.MANUAL)
    assert fo.request_failback(now=0.5) == [FailbackRefused(0.5, "already on the primary path")]
    fo.link_changed(P, False, now=1.0)
    assert fo.request_failback(now=2.0) == [FailbackRefused(2.0, "primary path is not healthy")]
    assert fo.active is B


def test_backup_failure_returns_to_healthy_primary_without_hold() -> None:
    fo = make(hold=60.0)
    fo.link_changed(P, False, now=1.0)
    fo.link_changed(P, True, now=2.0)
    fo.probe_ok(P, now=2.0)
    events = fo.link_changed(B, False, now=3.0)
    assert switches(events) == [Switched(B, P, Reason.CARRIER_DOWN, 3.0, outage=0.0, detection=0.0)]


def test_both_down_then_backup_restored_recovers_by_itself() -> None:
    fo = make()
    fo.probe_ok(P, now=0.5)
    fo.link_changed(P, False, now=1.0)
    assert fo.active is B
    events = fo.link_changed(B, False, now=2.0)
    assert events == [PathDown(B, Reason.CARRIER_DOWN, 2.0, 2.0), AllPathsDown(2.0, B)]
    assert fo.all_down
    assert fo.link_changed(B, True, now=3.0) == []
    events = fo.probe_ok(B, now=3.2)
    assert events[0] == PathUp(B, 3.2)
    sw = events[1]
    assert isinstance(sw, Switched)
    # Same role: the driver re-installs the routes the kernel dropped.
    assert (sw.frm, sw.to, sw.reason) == (B, B, Reason.RECOVERED)
    assert sw.outage == pytest.approx(1.2)
    assert not fo.all_down


def test_both_down_then_primary_restored_goes_to_primary_without_hold() -> None:
    fo = make(hold=60.0)
    fo.link_changed(P, False, now=1.0)
    fo.link_changed(B, False, now=2.0)
    fo.link_changed(P, True, now=3.0)
    events = fo.probe_ok(P, now=3.1)
    sw = switches(events)
    assert len(sw) == 1 and (sw[0].frm, sw[0].to) == (B, P)
    assert fo.active is P and fo.get_timer() is None


def test_both_down_by_probe_loss_records_outage_from_last_answer() -> None:
    fo = make()
    fo.probe_ok(B, now=0.0)
    for t in (0.1, 0.2, 0.3):
        fo.probe_missed(B, now=t)
    assert fo.active is P
    fo.probe_ok(P, now=1.0)
    for t in (1.1, 1.2):
        fo.probe_missed(P, now=t)
    assert isinstance(fo.probe_missed(P, now=1.3)[-1], AllPathsDown)
    fo.probe_ok(P, now=5.0)
    assert fo.history[-1].outage == pytest.approx(4.0)
    assert fo.history[-1].detection == pytest.approx(0.3)


def test_probe_answer_without_carrier_does_not_make_a_path_healthy() -> None:
    fo = make()
    fo.link_changed(B, False, now=1.0)
    assert fo.probe_ok(B, now=1.1) == []
    assert not fo.healthy(B)


def test_carrier_back_on_backup_needs_a_probe_before_use() -> None:
    fo = make()
    fo.link_changed(B, False, now=1.0)
    fo.link_changed(B, True, now=2.0)
    events = fo.link_changed(P, False, now=3.0)
    assert events == [PathDown(P, Reason.CARRIER_DOWN, 3.0, 3.0), AllPathsDown(3.0, P)]
    events = fo.probe_ok(B, now=3.05)
    assert switches(events)[0].to is B


def test_invalid_params_rejected() -> None:
    with pytest.raises(ValueError):
        Failover(FailoverParams(misses=0), now=0.0)
    with pytest.raises(ValueError):
        Failover(FailoverParams(hold_time=-1.0), now=0.0)


def test_resumed_on_the_backup_the_primary_must_answer_and_hold_before_failback() -> None:
    fo = Failover(FailoverParams(misses=3, hold_time=5.0), now=0.0, resume=B)
    assert fo.active is B and not fo.healthy(P) and fo.healthy(B) and fo.get_timer() is None
    # Its probes fail (the fault that moved traffic is still there): no switch.
    assert switches(fo.probe_missed(P, 0.1) + fo.probe_missed(P, 0.2) + fo.probe_missed(P, 0.3)) == []
    # Repaired: answered, then healthy for the hold time before traffic goes back.
    assert fo.probe_ok(P, 1.0) == [PathUp(P, 1.0)]
    assert fo.get_timer() == 6.0
    assert switches(fo.handle_timer(6.0)) == [Switched(B, P, Reason.HOLD_ELAPSED, 6.0, None, None)]


def test_resumed_on_a_path_without_carrier_starts_on_the_other() -> None:
    fo = Failover(FailoverParams(), now=0.0, backup_up=False, resume=B)
    assert fo.active is P and fo.healthy(P)
