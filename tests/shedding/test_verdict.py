"""Annex A40 5.2's formula and failure list, one test per reason, numbers worked by hand.

The site of every test: contractual power 1000 kW (5 % tolerance: 50 kW), interruptible
power 400 kW (a load reads zeroed up to 2 %: 8 kW), instantaneous (opening within 200 ms).
At the command (t = 1000 s) the site draws P0 = 900 kW, of which Pd = 400 kW on the
interruptible loads: every judged Pi must stay <= 900 - 400 + 50 = 550 kW. Samples come
every 4 s; a sample is judged if it was taken after the command plus the opening time
allowed (1000.2 s instantaneous, 1005 s emergency) and is in a slot up to the release.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from concentrator.shedding.config import ShedSite, SitePoints
from concentrator.shedding.verdict import (
    Change,
    Interruption,
    Reason,
    Sample,
    SiteEvidence,
    Status,
    judge_aggregate,
    judge_site,
)

POINTS = SitePoints(total_power=1001, loads=(1002,), breakers=(2001,), breaker_command=3001, release_command=3002,
                    lock=2002)  # fmt: skip
SITE = ShedSite("s1", (101,), True, POINTS, contractual_kw=1000, interruptible_kw=400)
EMERGENCY = replace(SITE, name="s2", instantaneous=False)
T0 = 1000.0


def good(t: float, total: float = 520.0, loads: float = 3.0) -> Sample:
    return Sample(t, total, True, loads, True)


def evidence(**changes: object) -> SiteEvidence:
    """A shedding that passes: opened 150 ms after the command, locked, Pi 520 kW, loads
    3 kW, released at 1012 s."""
    e = SiteEvidence(
        start=T0,
        command_at=T0,
        release_at=T0 + 12,
        before=Sample(T0 - 1, 900.0, True, 400.0, True),
        samples=[good(T0 + 4), good(T0 + 8), good(T0 + 12)],
        breakers={2001: [Change(T0 + 0.160, T0 + 0.150, False)]},
        lock=[Change(T0 + 0.170, T0 + 0.160, True)],
        skews=[0.001, -0.002],
    )
    for key, value in changes.items():
        setattr(e, key, value)
    return e


def judge(e: SiteEvidence, site: ShedSite = SITE, now: float = T0 + 100):
    return judge_site(site, e, now)


def test_a_clean_shedding_passes_with_p0_pd_and_the_band_computed() -> None:
    v = judge(evidence())
    assert v.passed and v.final and v.failures == ()
    assert (v.p0, v.pd, v.limit_kw) == (900.0, 400.0, 550.0)
    assert v.opening_time == pytest.approx(0.150)
    assert v.judged_from == pytest.approx(1000.2)  # the command plus 200 ms


def test_power_above_band_when_a_load_is_reconnected() -> None:
    # 551 kW > 550 kW at 1012 s: one kW over the band fails; 550 exactly passes.
    assert judge(evidence(samples=[good(T0 + 8, 550.0), good(T0 + 12, 550.0)])).passed
    v = judge(evidence(samples=[good(T0 + 8), good(T0 + 12, 551.0, 3.0)]))
    assert v.reasons == (Reason.POWER_ABOVE_BAND,)
    assert v.failures[0].at == T0 + 12


def taken(at: float, when: float, total: float = 900.0, loads: float = 400.0) -> Sample:
    """A slot ending at `at` whose values were taken at `when` (here: the opening not yet seen)."""
    return Sample(at, total, True, loads, True, taken=when)


@pytest.mark.parametrize(("site", "limit"), [(SITE, 0.2), (EMERGENCY, 5.0)])
def test_the_judged_window_starts_at_the_command_plus_the_opening_time_allowed(site: ShedSite, limit: float) -> None:
    # The same 900 kW sample (pre-opening power: far above the 550 kW band) in the slot
    # ending at 1008 s: taken 1 ms before the command + 200 ms / 5 s it cannot count against
    # the holder; taken 1 ms after, it is judged (and fails, as the load was not shed).
    opened = {2001: [Change(T0 + 0.16, T0 + 0.15, False)]}
    before = evidence(breakers=opened, samples=[taken(T0 + 8, T0 + limit - 0.001), good(T0 + 12)])
    v = judge(before, site)
    assert v.passed, v.failures
    assert v.judged_from == pytest.approx(T0 + limit)
    after = evidence(breakers=opened, samples=[taken(T0 + 8, T0 + limit + 0.001), good(T0 + 12)])
    assert set(judge(after, site).reasons) == {Reason.POWER_ABOVE_BAND, Reason.LOAD_NOT_ZEROED}
    # A slot is judged when it was taken, not where it ends: the oldest value counts, and
    # an empty slot (counted 0 by 5.3) at its end.
    assert Sample(T0 + 8, None, False, None, False).instant == T0 + 8
    # A sample in a slot after the release is not judged, whenever it was taken.
    late = evidence(breakers=opened, samples=[good(T0 + 8), taken(T0 + 16, T0 + 15)])
    assert judge(late, site).passed


def test_a_shedding_the_monitor_did_not_see_whole_is_not_judged_never_passed() -> None:
    restart = Interruption(T0 + 5, T0 + 7, "monitor restarted at ...; copies from ... lost", None)
    v = judge(evidence(interruptions=[restart]))
    assert v.status is Status.NOT_JUDGED and not v.passed and v.note == restart.cause
    # A restart that lost nothing is only noted; a failure seen is a failure anyway.
    assert judge(evidence(interruptions=[replace(restart, lost=0)])).status is Status.PASS
    failed = judge(evidence(interruptions=[restart], samples=[good(T0 + 8, 600.0)]))
    assert failed.status is Status.FAIL and failed.reasons == (Reason.POWER_ABOVE_BAND,)
    # An interruption after the release does not touch the shedding.
    assert judge(evidence(interruptions=[replace(restart, start=T0 + 13, end=T0 + 14)])).passed


def test_invalid_quality_counts_as_zero_and_fails_as_measure_unavailable() -> None:
    v = judge(evidence(samples=[Sample(T0 + 8, 520.0, False, 3.0, True), good(T0 + 12)]))
    assert v.reasons == (Reason.MEASURE_INVALID,)
    assert Sample(T0 + 8, 520.0, False, 3.0, True).pi == 0.0


def test_missing_p0_counts_as_zero_so_the_site_cannot_pass() -> None:
    # 5.3: P0 = 0, Pd = 0, band 0 - 0 + 50 = 50 kW; Pi 520 kW > 50 kW.
    v = judge(evidence(before=None))
    assert (v.p0, v.pd, v.limit_kw) == (0.0, 0.0, 50.0)
    assert set(v.reasons) == {Reason.MEASURE_INVALID, Reason.POWER_ABOVE_BAND}


def test_updc_disconnected_after_20_s_of_silence_but_not_16() -> None:
    # Last sample at 1008 s; silence until 1024 s is 16 s (tolerated), until 1028 s 20 s.
    silent = [Sample(T0 + t, None, False, None, False) for t in (12, 16, 20, 24)]
    ok = evidence(samples=[good(T0 + 8), *silent, good(T0 + 28)], release_at=T0 + 28)
    assert judge(ok).passed
    bad = evidence(samples=[good(T0 + 8), *silent, Sample(T0 + 28, None, False, None, False)], release_at=T0 + 28)
    v = judge(bad)
    assert v.reasons == (Reason.UPDC_DISCONNECTED,)
    assert v.failures[0].at == T0 + 28


def test_breaker_not_opened() -> None:
    v = judge(evidence(breakers={2001: []}))
    assert Reason.BREAKER_NOT_OPENED in v.reasons and v.opening_time is None


def test_breaker_late_over_200_ms_instantaneous_and_5_s_emergency() -> None:
    # Tagged 250 ms after the command: late for an instantaneous site.
    v = judge(evidence(breakers={2001: [Change(T0 + 0.26, T0 + 0.250, False)]}))
    assert v.reasons == (Reason.BREAKER_LATE,) and v.opening_time == pytest.approx(0.25)
    # An emergency site has 5 s: 4.9 s passes, 5.1 s does not.
    late_ok = evidence(breakers={2001: [Change(T0 + 4.91, T0 + 4.9, False)]}, release_at=T0 + 12)
    assert judge(late_ok, EMERGENCY).passed
    too_late = evidence(breakers={2001: [Change(T0 + 5.11, T0 + 5.1, False)]})
    assert judge(too_late, EMERGENCY).reasons == (Reason.BREAKER_LATE,)


def test_breaker_position_unavailable() -> None:
    v = judge(evidence(breakers={2001: [Change(T0 + 0.16, T0 + 0.15, False), Change(T0 + 6, T0 + 6, False, False)]}))
    assert v.reasons == (Reason.BREAKER_INVALID,)


def test_reclosed_before_the_release() -> None:
    v = judge(evidence(breakers={2001: [Change(T0 + 0.16, T0 + 0.15, False), Change(T0 + 10, T0 + 10, True)]}))
    assert v.reasons == (Reason.RECLOSED_EARLY,)
    # The same closing after the release (1012 s) is the holder's right.
    after = evidence(breakers={2001: [Change(T0 + 0.16, T0 + 0.15, False), Change(T0 + 13, T0 + 13, True)]})
    assert judge(after).passed


def test_lock_never_set() -> None:
    assert judge(evidence(lock=[])).reasons == (Reason.NOT_LOCKED,)


def test_lock_released_before_the_release_command() -> None:
    v = judge(evidence(lock=[Change(T0 + 0.17, T0 + 0.16, True), Change(T0 + 11, T0 + 11, False)]))
    assert v.reasons == (Reason.UNLOCKED_EARLY,)


def test_load_measure_not_zeroed() -> None:
    # 9 kW > 8 kW (2 % of 400); Pi stays in the band (529 kW <= 550 kW).
    v = judge(evidence(samples=[good(T0 + 8, 529.0, 9.0), good(T0 + 12)]))
    assert v.reasons == (Reason.LOAD_NOT_ZEROED,)


def test_time_error_over_5_ms_only_for_instantaneous_sites() -> None:
    assert judge(evidence(skews=[0.001, -0.006])).reasons == (Reason.TIME_ERROR,)
    late_ok = evidence(skews=[0.001, -0.006], breakers={2001: [Change(T0 + 1, T0 + 1, False)]})
    assert judge(late_ok, EMERGENCY).passed


def test_grid_disconnection_of_a_site_with_generation() -> None:
    # 5.6: negative total power is fine (Pi -200 kW <= 550 kW); leaving the grid is not,
    # and a disconnected site's loads are credited 0.
    negative = [good(T0 + 8, -200.0), good(T0 + 12, -200.0)]
    assert judge(evidence(samples=negative, grid=[])).passed
    v = judge(evidence(samples=negative, grid=[Change(T0 + 9, T0 + 9, False)]))
    assert v.reasons == (Reason.GRID_DISCONNECTED,)
    assert Sample(T0, 500.0, True, 400.0, True, grid_connected=False).credited_load == 0.0


def test_a_running_shedding_is_provisional() -> None:
    v = judge(evidence(release_at=None), now=T0 + 9)
    assert v.passed and not v.final


def test_aggregate_names_the_failing_site_and_sums_the_band() -> None:
    a = evidence()
    b = evidence(samples=[good(T0 + 8), good(T0 + 12, 600.0)])
    site_b = replace(SITE, name="s2")
    verdicts = [judge(a), judge(b, site_b)]
    agg = judge_aggregate(verdicts, {"s1": a, "s2": b})
    assert agg.status is Status.FAIL and agg.failed_sites == ("s2",)
    # 1004 s: s1 only (s2 has no sample there); 1008 s: 520 + 520 = 1040 against 550 + 550 =
    # 1100; 1012 s: 520 + 600 = 1120 > 1100.
    assert agg.band == ((T0 + 4, 520.0, 550.0), (T0 + 8, 1040.0, 1100.0), (T0 + 12, 1120.0, 1100.0))
