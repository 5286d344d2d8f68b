"""What the operator will conclude of a shedding (annex A40 5.2-5.6), per site and in
aggregate. Pure: the evidence and the time are passed in; no clock, no I/O.

How the annex is read (docs/shedding.md says why):

- 5.2: from the shedding command until the release, every 4-second sample Pi of the
  site's total power must satisfy Pi <= P0 - Pd + 5 % of the contractual power. P0 is
  the sample current at the command; Pd, the power shed, is the sum of the site's
  interruptible load measures in that same sample (measured, not the assigned power).
  The judged window: a sample counts if it was taken after the command plus the opening
  time allowed (200 ms instantaneous, 5 s emergency: 5.1.1), in a slot ending no later
  than the release. A
  sample's time is that of the oldest value in it (UPDC time tag, else receive time); a
  slot with no value counts at its end. A sample taken before the breaker could open
  cannot count against the holder; every one after can.
- 5.3: a sample not received, or received with invalid quality, counts as zero (so P0
  is 0 when its sample is missing, and the site cannot pass the formula). An invalid
  sample during the shedding is also the failure "measure unavailable"; a silence is
  tolerated below 20 s (footnote 2, switching to the backup) and fails at 20 s.
- 5.2's list: breaker not opened, opened later than 200 ms (instantaneous) or 5 s
  (emergency) after the command by the UPDC's time tag, position unavailable, reclosed or
  unlocked before the release, lock never set (when the lock is mapped), load measure
  not zeroed, time error over 5 ms (instantaneous sites).
- 5.6: a site with a connection-to-grid point must stay connected throughout.

A verdict PASSes only on complete evidence: when copies of the site's ASDUs may have been
lost during the shedding (monitor restarted without its copies, tap overloaded), a site
that failed nothing is NOT_JUDGED, never PASS; a failure seen is still a FAIL.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .config import ShedSite

DISCONNECTION_TOLERATED = 20.0  # seconds (footnote 2: switching to the backup circuit)
TIME_ERROR_LIMIT = 0.005  # seconds (5.4, instantaneous interruptibility)
LOAD_ZERO_FRACTION = 0.02  # a load measure within 2 % of the interruptible power reads "zeroed"


class Status(StrEnum):
    """A verdict's outcome. Further outcomes (e.g. an unavailability notified to the
    operator, which makes a shedding not creditable) extend this enum with their note."""

    PASS = "pass"
    FAIL = "fail"
    NOT_JUDGED = "not_judged"  # the monitor did not see all of the shedding

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").upper()


class Reason(StrEnum):
    POWER_ABOVE_BAND = "power_above_band"  # Pi > P0 - Pd + 5 % of the contractual power
    MEASURE_INVALID = "measure_invalid"  # a total or load sample with invalid quality
    UPDC_DISCONNECTED = "updc_disconnected"  # no total power sample for 20 s or more
    BREAKER_NOT_OPENED = "breaker_not_opened"
    BREAKER_LATE = "breaker_late"  # opened after 200 ms / 5 s
    BREAKER_INVALID = "breaker_invalid"  # position with invalid quality or indeterminate
    RECLOSED_EARLY = "reclosed_early"  # breaker closed again before the release
    NOT_LOCKED = "not_locked"  # lock mapped but never set after the opening
    UNLOCKED_EARLY = "unlocked_early"  # lock dropped before the release
    LOAD_NOT_ZEROED = "load_not_zeroed"
    TIME_ERROR = "time_error"  # time tags off by more than 5 ms (instantaneous)
    GRID_DISCONNECTED = "grid_disconnected"  # 5.6: not connected to the grid


def utc(t: float | None) -> str:
    """A time as verdicts and reports write it: ISO 8601, UTC, milliseconds."""
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Sample:
    """One 4-second slot of one site, as the BMI sees it."""

    at: float  # end of the slot, seconds since the epoch (concentrator clock)
    total: float | None  # raw total power, None if no sample arrived in time
    total_valid: bool
    loads: float | None  # sum of the raw load measures, None if one is missing
    loads_valid: bool
    grid_connected: bool | None = None  # 5.6 state, None if not mapped or unknown
    taken: float | None = None  # when the oldest value in it was taken (UPDC tag, else receive time)
    complete: bool = True  # False: copies of this slot's window may have been lost (see Interruption)

    @property
    def instant(self) -> float:
        """The time the judged window compares: when it was taken, or the slot's end if empty."""
        return self.taken if self.taken is not None else self.at

    @property
    def pi(self) -> float:
        """The credited total power (5.3: missing or invalid counts as zero)."""
        return self.total if self.total is not None and self.total_valid else 0.0

    @property
    def credited_load(self) -> float:
        """The credited interruptible power: 5.3, and 5.6 (zero while off the grid)."""
        if self.loads is None or not self.loads_valid or self.grid_connected is False:
            return 0.0
        return self.loads


@dataclass(frozen=True, slots=True)
class Change:
    """A change of a signal (breaker, lock, grid connection) as the UPDC reported it."""

    received: float  # concentrator clock
    tagged: float | None  # the UPDC's time tag, None if absent or flagged invalid
    state: bool | None  # breaker True = closed; lock True = locked; grid True = connected; None indeterminate
    valid: bool = True

    @property
    def at(self) -> float:
        return self.tagged if self.tagged is not None else self.received


@dataclass(frozen=True, slots=True)
class Interruption:
    """A span in which the monitor did not see every copy (restart, tap overload)."""

    start: float
    end: float
    cause: str  # one sentence, e.g. "monitor restarted at ...: copies lost"
    lost: int | None  # copies lost; None: unknown; 0: none (a restart resumed from its copies)


@dataclass
class SiteEvidence:
    """What the monitor saw of one site during one shedding."""

    start: float  # command, trip or first opening: whichever came first
    command_at: float | None  # the shedding command (BMI downlink or kernel trip counter)
    release_at: float | None = None  # the release command, None while still shed
    before: Sample | None = None  # the sample current at the start: P0 and Pd
    samples: list[Sample] = field(default_factory=list)  # each slot after the start
    breakers: dict[int, list[Change]] = field(default_factory=dict)  # per breaker, changes since start
    lock: list[Change] | None = None  # None: lock not mapped
    locked_at_start: bool = False
    grid: list[Change] | None = None  # None: not mapped
    skews: list[float] = field(default_factory=list)  # time tag skews seen, seconds
    interruptions: list[Interruption] = field(default_factory=list)  # during the shedding


@dataclass(frozen=True, slots=True)
class Failure:
    reason: Reason
    detail: str
    at: float | None = None


@dataclass(frozen=True)
class SiteVerdict:
    site: str
    status: Status
    final: bool  # False while the shedding goes on (the verdict may still turn)
    failures: tuple[Failure, ...]
    p0: float
    pd: float
    limit_kw: float  # P0 - Pd + 5 % of the contractual power
    opening_time: float | None  # seconds from the command to the opening (UPDC tag)
    judged_from: float  # samples taken after this instant count (command + opening time allowed)
    note: str = ""  # why not judged (or what was interrupted)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(dict.fromkeys(f.reason for f in self.failures))


def judge_site(site: ShedSite, evidence: SiteEvidence, now: float) -> SiteVerdict:
    e = evidence
    failures: list[Failure] = []
    end = e.release_at if e.release_at is not None else now
    origin = e.command_at if e.command_at is not None else e.start
    opening_time = _breakers(site, e, origin, end, failures)
    # The one judged window (docs/shedding.md): samples taken after the breaker could open.
    judged_from = origin + site.opening_limit

    before = e.before
    p0 = before.pi if before is not None else 0.0
    pd = before.credited_load if before is not None else 0.0
    limit = p0 - pd + site.tolerance_kw
    if before is None or before.total is None:
        failures.append(Failure(Reason.MEASURE_INVALID, "no total power sample at the command: P0 counts as 0"))
    samples = [s for s in e.samples if s.at <= end]
    if before is not None:
        samples_with_before = [before, *samples]
    else:
        samples_with_before = samples

    for s in samples_with_before:
        if (s.total is not None and not s.total_valid) or (s.loads is not None and not s.loads_valid):
            which = "total power" if s.total is not None and not s.total_valid else "load measure"
            failures.append(Failure(Reason.MEASURE_INVALID, f"{which} sample with invalid quality (counts as 0)", s.at))
            break

    _silences(samples, e.start, end, failures)

    zero = LOAD_ZERO_FRACTION * site.interruptible_kw
    judged = judged_samples(samples, judged_from, end)
    for s in judged:
        if s.pi > limit:
            failures.append(Failure(Reason.POWER_ABOVE_BAND,
                                    f"Pi {s.pi:.1f} kW > P0 {p0:.1f} - Pd {pd:.1f} + {site.tolerance_kw:.1f} "
                                    f"= {limit:.1f} kW", s.at))  # fmt: skip
            break
    for s in judged:
        if s.loads is not None and s.loads_valid and s.loads > zero:
            failures.append(Failure(Reason.LOAD_NOT_ZEROED, f"load measure {s.loads:.1f} kW > {zero:.1f} kW", s.at))
            break

    _lock(e, end, judged_from, failures)

    if e.grid is not None:
        off = next((c for c in e.grid if c.received <= end and (c.state is False or not c.valid)), None)
        if off is not None:
            failures.append(Failure(Reason.GRID_DISCONNECTED, "site not connected to the grid (5.6)", off.received))
    if site.instantaneous and e.skews:
        worst = max(e.skews, key=abs)
        if abs(worst) > TIME_ERROR_LIMIT:
            failures.append(Failure(Reason.TIME_ERROR, f"time tags off by {worst * 1000:.1f} ms (limit 5 ms)"))

    # The monitor lists the interruptions that met the shedding (or the samples giving P0).
    lost = [i for i in e.interruptions if i.lost != 0 and i.start <= end]
    note = "; ".join(i.cause for i in lost)
    status = Status.FAIL if failures else Status.NOT_JUDGED if lost else Status.PASS
    return SiteVerdict(site.name, status, e.release_at is not None, tuple(failures), p0, pd, limit,
                       opening_time, judged_from, note)  # fmt: skip


def judged_samples(samples: Sequence[Sample], judged_from: float, end: float) -> list[Sample]:
    """The judged window: samples taken after the command plus the opening time allowed
    (`judged_from`), in slots up to the release (`end`)."""
    return [s for s in samples if s.instant > judged_from and s.at <= end]


def _silences(samples: Sequence[Sample], start: float, end: float, failures: list[Failure]) -> None:
    """Footnote 2: silences under 20 s are tolerated (their samples count as 0)."""
    last = start
    for s in samples:
        if s.total is not None:
            last = s.at
        elif s.at - last >= DISCONNECTION_TOLERATED:
            failures.append(Failure(Reason.UPDC_DISCONNECTED, f"no total power sample for {s.at - last:.0f} s", s.at))
            return


def _breakers(site: ShedSite, e: SiteEvidence, origin: float, end: float,
              failures: list[Failure]) -> float | None:  # fmt: skip
    """Opening (every breaker OFF: 5.1.5's cumulative breaker): how long after the
    command; reclosing."""
    opened: list[float] = []
    for ioa, changes in sorted(e.breakers.items()):
        changes = [c for c in changes if c.received <= end]
        bad = next((c for c in changes if not c.valid or c.state is None), None)
        if bad is not None:
            failures.append(Failure(Reason.BREAKER_INVALID, f"breaker {ioa} position unavailable", bad.received))
        first_open = next((c for c in changes if c.valid and c.state is False), None)
        if first_open is None:
            if end - origin > site.opening_limit:
                failures.append(Failure(Reason.BREAKER_NOT_OPENED, f"breaker {ioa} not opened"))
            continue
        opened.append(first_open.at)
        reclosed = next((c for c in changes if c.received > first_open.received and c.valid and c.state), None)
        if reclosed is not None:
            failures.append(Failure(Reason.RECLOSED_EARLY, f"breaker {ioa} closed before the release",
                                    reclosed.received))  # fmt: skip
    if not opened or len(opened) < len(e.breakers) or e.command_at is None:
        return None
    opening = max(opened) - e.command_at
    if opening > site.opening_limit:
        failures.append(Failure(Reason.BREAKER_LATE, f"opened {opening * 1000:.0f} ms after the command "
                                f"(limit {site.opening_limit * 1000:.0f} ms)", max(opened)))  # fmt: skip
    return opening


def _lock(e: SiteEvidence, end: float, judged_from: float, failures: list[Failure]) -> None:
    if e.lock is None:
        return
    changes = [c for c in e.lock if c.received <= end]
    locked = e.locked_at_start
    ever = locked
    for c in changes:
        if not c.valid or c.state is None:
            continue
        if locked and not c.state:
            failures.append(Failure(Reason.UNLOCKED_EARLY, "lock released before the release command", c.received))
            return
        locked = c.state
        ever = ever or locked
    if not ever and end >= judged_from:
        failures.append(Failure(Reason.NOT_LOCKED, "reclosing lock never set"))


@dataclass(frozen=True)
class AggregateVerdict:
    status: Status
    failed_sites: tuple[str, ...]
    band: tuple[tuple[float, float, float], ...]  # (slot, sum of Pi, sum of P0 - Pd + tolerance)


def judge_aggregate(verdicts: Sequence[SiteVerdict], evidence: dict[str, SiteEvidence]) -> AggregateVerdict:
    """The shedding as a whole passes if every site passes (fails if one fails, else is not
    judged if one is not); the summed band is for the plot."""
    totals: dict[float, list[float]] = {}
    for v in verdicts:
        e = evidence[v.site]
        for s in judged_samples(e.samples, v.judged_from, e.release_at if e.release_at is not None else math.inf):
            slot = totals.setdefault(s.at, [0.0, 0.0])
            slot[0] += s.pi
            slot[1] += v.limit_kw
    failed = tuple(v.site for v in verdicts if v.status is not Status.PASS)
    statuses = {v.status for v in verdicts}
    status = Status.FAIL if Status.FAIL in statuses else Status.NOT_JUDGED if failed else Status.PASS
    band = tuple((at, pi, limit) for at, (pi, limit) in sorted(totals.items()))
    return AggregateVerdict(status, failed, band)
