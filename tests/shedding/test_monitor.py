"""The monitor's core over synthetic ASDUs (sans-I/O: times passed in)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from concentrator.config import Endpoint
from concentrator.shedding.config import SheddingConfig, ShedSite, SitePoints
from concentrator.shedding.monitor import AggregateRow, EventRow, SampleRow, SheddingMonitor, VerdictRow
from concentrator.shedding.record import Applied, ShedRecord, open_read_only
from concentrator.shedding.record import events as stored_events
from concentrator.shedding.report import event_summary
from concentrator.shedding.verdict import Interruption, Reason, Status
from concentrator.sim.points import (
    breaker_command,
    double_point,
    float_measurements,
    release_command,
    single_point,
)

POINTS = SitePoints(1001, (1002,), (2001,), 3001, 3002, lock=2002)
SITES = (
    ShedSite("a", (101,), True, POINTS, 1000, 400),
    ShedSite("b", (102,), False, POINTS, 1000, 400, trip_group="239.1.1.1"),
)
CONFIG = SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), 4.0, 1000, SITES)
T = 1_800_000_000.0  # a multiple of 4 s


def samples(m: SheddingMonitor, ca: int, site: str, t: float, total: float, load: float, invalid: bool = False) -> None:
    m.site_asdu(site, float_measurements(ca, [(1001, total), (1002, load)], t, invalid=invalid), t + 0.002)


def shed(m: SheddingMonitor, misbehave: str = "") -> None:
    samples(m, 101, "a", T - 1, 900, 400)
    m.bmi_asdu(breaker_command(101, False, select=True), T - 0.05)  # a select starts nothing
    assert m.event is None
    m.bmi_asdu(breaker_command(101, False), T)
    opened = T + (0.3 if misbehave == "late" else 0.12)
    m.site_asdu("a", double_point(101, 2001, False, opened), opened + 0.002)
    m.site_asdu("a", single_point(101, 2002, True, opened + 0.01), opened + 0.012)
    for k in range(1, 4):
        t = T + 4 * k - 1
        total = 620 if misbehave == "reconnect" and k == 3 else 505
        samples(m, 101, "a", t, total, 0, invalid=misbehave == "iv" and k == 2)
        samples(m, 102, "b", t, 900, 400)
    m.bmi_asdu(release_command(101), T + 12.5)


def test_a_commanded_shedding_is_recorded_sampled_and_judged() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    shed(m)
    records = m.take_records()
    assert m.event is None  # released: the event is closed
    events = [r for r in records if isinstance(r, EventRow)]
    assert events[0].trigger == "command" and events[-1].end == T + 12.5 and events[-1].sites == ("a",)
    final = [r.verdict for r in records if isinstance(r, VerdictRow) and r.verdict.final]
    assert len(final) == 1 and final[0].passed, final
    assert (final[0].p0, final[0].pd) == (900.0, 400.0) and abs(final[0].opening_time - 0.12) < 0.002
    agg = [r for r in records if isinstance(r, AggregateRow)][-1]
    assert agg.status is Status.PASS and agg.final
    rows = [r for r in records if isinstance(r, SampleRow) and r.site == "a"]
    assert [r.sample.at for r in rows] == [T, T + 4, T + 8, T + 12]
    assert rows[0].breaker_closed is None and rows[1].breaker_closed is False
    assert rows[1].sample.credited_load == 0.0 and rows[0].sample.credited_load == 400.0


def test_each_misbehaviour_is_named() -> None:
    for misbehave, reason in (("late", Reason.BREAKER_LATE), ("reconnect", Reason.POWER_ABOVE_BAND),
                              ("iv", Reason.MEASURE_INVALID)):  # fmt: skip
        m = SheddingMonitor(CONFIG, T - 3)
        shed(m, misbehave)
        final = [r.verdict for r in m.take_records() if isinstance(r, VerdictRow) and r.verdict.final]
        assert final[0].reasons == (reason,), (misbehave, final)


def test_a_trip_counted_by_the_kernel_sheds_the_sites_of_its_group() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    samples(m, 102, "b", T - 1, 900, 400)
    m.trip("239.1.1.1", T)
    assert m.event is not None and list(m.event.sites) == ["b"] and m.event.sites["b"].command_at == T
    m.tick(T + 20)
    verdict = m.last_verdicts["b"]  # never opened: provisional failure while it lasts
    assert not verdict.final and Reason.BREAKER_NOT_OPENED in verdict.reasons


def test_a_breaker_opening_alone_starts_an_event_without_a_command_time() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    m.site_asdu("a", double_point(101, 2001, False, T + 0.1), T + 0.102)
    assert m.event is not None and m.event.sites["a"].command_at is None
    assert m.event.start == T + 0.1  # the UPDC's time tag


def test_a_trip_polled_after_the_opening_gives_the_command_time_afterwards() -> None:
    # The breaker's OFF (tagged T + 0.03) arrives before the 50 ms poll sees the trip counter
    # rise at T + 0.05: the event starts at the opening, the poll fills in the command time,
    # and the opening reads -20 ms (a trip's opening time is bounded by the poll interval).
    m = SheddingMonitor(CONFIG, T - 3)
    m.site_asdu("b", double_point(102, 2001, False, T + 0.03), T + 0.032)
    m.trip("239.1.1.1", T + 0.05)
    evidence = m.event.sites["b"]
    assert evidence.command_at == T + 0.05 and evidence.start == T + 0.03
    assert len(evidence.breakers[2001]) == 1
    m.tick(T + 8)
    assert abs(m.last_verdicts["b"].opening_time - (-0.02)) < 1e-6


def test_an_open_breaker_in_an_interrogation_answer_starts_nothing() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    answer = bytearray(double_point(101, 2001, False, T))
    answer[2] = 20  # cause: interrogated by station
    m.site_asdu("a", bytes(answer), T + 0.01)
    assert m.event is None and m.sites["a"].breakers[2001].state is False


def test_an_opening_without_a_command_is_closed_unjudged_and_the_next_shedding_is_new() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    m.site_asdu("a", double_point(101, 2001, False, T + 0.1), T + 0.102)
    m.tick(T + 8)
    assert m.event is not None and not m.last_verdicts  # not judged while no command is seen
    m.tick(T + 12)  # 10 s after the opening with no command: the holder opened it
    assert m.event is None
    closed = [r for r in m.take_records() if isinstance(r, EventRow)][-1]
    assert closed.end == T + 12 and closed.trigger == "breaker opened without a shedding command"
    m.bmi_asdu(breaker_command(102, False), T + 20)
    assert m.event is not None and m.event.event_id == 2 and list(m.event.sites) == ["b"]


def test_a_monitor_resumed_from_the_record_judges_the_shedding_as_one_never_stopped(tmp_path: Path) -> None:
    whole = SheddingMonitor(CONFIG, T - 3)
    shed(whole, "reconnect")
    expected = whole.last_verdicts["a"]
    assert expected.final and expected.reasons == (Reason.POWER_ABOVE_BAND,)

    # The same shedding, the monitor stopped after the sample of T + 3 and the slot of T + 4.
    first = SheddingMonitor(CONFIG, T - 3)
    samples(first, 101, "a", T - 1, 900, 400)
    first.bmi_asdu(breaker_command(101, False), T)
    first.site_asdu("a", double_point(101, 2001, False, T + 0.12), T + 0.122)
    first.site_asdu("a", single_point(101, 2002, True, T + 0.13), T + 0.132)
    samples(first, 101, "a", T + 3, 505, 0)
    first.tick(T + 4.5)
    record = ShedRecord(str(tmp_path / "r.sqlite"))
    record.write(first.take_records(), Applied("relay", 5, T + 3.002, first.next_slot))

    resumed = SheddingMonitor(CONFIG, T + 5, resume=record.resume(CONFIG, T + 5))
    assert resumed.next_slot == T + 8 and resumed.event is not None and resumed.event.event_id == 1
    assert resumed.sites["a"].breakers[2001].state is False  # the latest states came back too
    samples(resumed, 101, "a", T + 7, 505, 0)
    samples(resumed, 101, "a", T + 11, 620, 0)
    resumed.bmi_asdu(release_command(101), T + 12.5)
    assert resumed.event is None  # the release closed the resumed event
    got = resumed.last_verdicts["a"]
    assert (got.status, got.final, got.reasons, got.p0, got.pd, got.limit_kw) == (
        expected.status, expected.final, expected.reasons, expected.p0, expected.pd, expected.limit_kw)  # fmt: skip
    assert abs(got.opening_time - expected.opening_time) < 0.001 and got.judged_from == expected.judged_from
    record.write(resumed.take_records())
    (end,) = record.db.execute("SELECT end FROM events WHERE id = 1").fetchone()
    assert end == T + 12.5
    record.close()


def test_a_loss_during_a_shedding_makes_a_clean_site_not_judged_and_flags_its_slots() -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    samples(m, 101, "a", T - 1, 900, 400)
    m.bmi_asdu(breaker_command(101, False), T)
    m.site_asdu("a", double_point(101, 2001, False, T + 0.12), T + 0.122)
    m.site_asdu("a", single_point(101, 2002, True, T + 0.13), T + 0.132)
    m.interrupted(Interruption(T + 5, T + 6, "tap queue full: 3 copies dropped", 3))
    for k in range(1, 4):
        samples(m, 101, "a", T + 4 * k - 1, 505, 0)
    m.bmi_asdu(release_command(101), T + 12.5)
    verdict = m.last_verdicts["a"]
    assert verdict.status is Status.NOT_JUDGED and verdict.note == "tap queue full: 3 copies dropped"
    rows = [r.sample for r in m.take_records() if isinstance(r, SampleRow) and r.site == "a"]
    # Slots whose look-back (1.5 periods, 6 s) meets 5..6 s: the one ending at 8 s, not 4 s
    # (ended before) nor 12 s (looks back to 6 s exclusive).
    assert [(s.at - T, s.complete) for s in rows] == [(0, True), (4, True), (8, False), (12, True)]
    assert m.incomplete_slots == len(SITES)


def test_a_shedding_that_cannot_be_resumed_is_closed_not_judged_never_left_passing(tmp_path: Path) -> None:
    m = SheddingMonitor(CONFIG, T - 3)
    samples(m, 101, "a", T - 1, 900, 400)
    m.bmi_asdu(breaker_command(101, False), T)
    m.site_asdu("a", double_point(101, 2001, False, T + 0.12), T + 0.122)
    m.site_asdu("a", single_point(101, 2002, True, T + 0.13), T + 0.132)
    samples(m, 101, "a", T + 3, 505, 0)
    m.tick(T + 8)
    assert m.last_verdicts["a"].passed and not m.last_verdicts["a"].final  # PASS, provisional
    record = ShedRecord(str(tmp_path / "r.sqlite"))
    record.write(m.take_records())
    # Restarted with site a no longer configured: its shedding cannot be resumed.
    resume = record.resume(replace(CONFIG, sites=CONFIG.sites[1:]), T + 20)
    assert resume is not None and resume.event is None
    record.close()
    db = open_read_only(str(tmp_path / "r.sqlite"))
    (event,) = stored_events(db)
    summary = event_summary(db, event)
    assert event.end == T + 20
    (verdict,) = summary["verdicts"]
    assert (verdict["status"], verdict["final"]) == ("not_judged", True)
    assert verdict["note"].endswith("this shedding could not be resumed")
    assert summary["aggregate"] == {"status": "not_judged", "final": True, "sites_not_passing": ["a"]}
    db.close()
