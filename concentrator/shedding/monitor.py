"""The compliance monitor's core: copies of site and BMI ASDUs in, 4-second samples,
shedding events and verdicts out. Sans-I/O: every call takes the wall-clock time of
the observation (the concentrator's clock), nothing here reads a clock or a socket.

- `site_asdu(site, asdu, at)`: a site ASDU the relay forwarded to the BMI;
- `bmi_asdu(asdu, at)`: a BMI ASDU the relay accepted from the active connection;
- `trip(group, at)`: the kernel forwarded trip datagrams of `group` (its counter rose);
- `tick(at)`: closes every 4-second slot up to `at`;
- `interrupted(interruption)`: copies of a span may have been lost (restart, tap drops);
- `site_values(site, asdu, at)`: a copy already applied before a restart: it only
  restores the latest measured values.
Each returns nothing; what to record accumulates in `take_records()`. A monitor built
with a `Resume` (read from the record by record.resume) continues where the record ends:
the next slot to close, the latest signal states, the shedding in progress.

A shedding event starts at the first of: a breaker-open command on the downlink, a trip
counted by the kernel for the site's group, a breaker reported open. It ends when every
site in it got its release command. See verdict.py for how each site is judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from concentrator.iec104.asdu import BROADCAST_CA, AsduError, AsduHeader, Cause
from concentrator.iec104.decode import DecodeError, InformationObject, TypeId, decode_asdu

from .config import SheddingConfig, ShedSite
from .verdict import (
    Change,
    Interruption,
    Sample,
    SiteEvidence,
    SiteVerdict,
    Status,
    judge_aggregate,
    judge_site,
)

# Control-direction types decode.py does not cover (it decodes the monitor direction);
# decoded here: single and double command, without and with CP56Time2a.
# command type -> is it a double command
_COMMAND_TYPES: dict[int, bool] = {
    TypeId.C_SC_NA_1: False,
    TypeId.C_DC_NA_1: True,
    TypeId.C_SC_TA_1: False,
    TypeId.C_DC_TA_1: True,
}
MAX_AGE_PERIODS = 1.5  # a slot takes the latest sample received within 1.5 periods
# A breaker that opens with no shedding command or trip seen within this many seconds was
# opened by the holder (or by a trip path not configured): not a shedding, not judged.
UNCOMMANDED_AFTER = 10.0
UNCOMMANDED = "breaker opened without a shedding command"
# After a long stop, slots further back than this are not closed one by one (the
# interruption's span in the record says why they are absent).
MAX_CATCH_UP = 3600.0


@dataclass(frozen=True, slots=True)
class Value:
    value: float
    valid: bool
    received: float
    taken: float  # the UPDC's time tag, else the receive time


@dataclass(frozen=True, slots=True)
class SampleRow:
    site: str
    sample: Sample
    breaker_closed: bool | None
    skew: float | None  # seconds, latest


@dataclass(frozen=True, slots=True)
class ChangeRow:
    site: str
    ioa: int
    point: str  # breaker, lock, grid
    change: Change


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: int
    start: float
    end: float | None
    trigger: str
    sites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VerdictRow:
    event_id: int
    verdict: SiteVerdict


@dataclass(frozen=True, slots=True)
class AggregateRow:
    event_id: int
    status: Status
    final: bool
    failed_sites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EventSiteRow:
    """What a restarted monitor needs to resume a site's part of a shedding (the samples
    and changes since `joined` are in their own tables)."""

    event_id: int
    site: str
    joined: float  # receive time at which the site joined the event
    start: float
    command_at: float | None
    release_at: float | None
    before: Sample | None
    locked_at_start: bool
    worst_skew: float | None


@dataclass(frozen=True, slots=True)
class InterruptionRow:
    interruption: Interruption
    period: float  # slots whose look-back window meets the span are flagged incomplete


Record = SampleRow | ChangeRow | EventRow | VerdictRow | AggregateRow | EventSiteRow | InterruptionRow


@dataclass
class SiteState:
    site: ShedSite
    total: list[Value] = field(default_factory=list)  # the last two samples (P0 at a past start)
    loads: dict[int, Value] = field(default_factory=dict)
    breakers: dict[int, Change] = field(default_factory=dict)
    lock: Change | None = None
    grid: Change | None = None
    skew: float | None = None
    last_sample: Sample | None = None


@dataclass
class Event:
    event_id: int
    start: float
    trigger: str
    sites: dict[str, SiteEvidence] = field(default_factory=dict)
    joined: dict[str, float] = field(default_factory=dict)  # site -> receive time it joined


@dataclass
class Resume:
    """Where the record ends (record.resume reads it)."""

    next_slot: float  # the first slot not in the record
    next_event_id: int
    signals: dict[str, list[tuple[str, int, Change]]]  # per site: latest (point, ioa, change)
    event: Event | None  # the shedding in progress, its evidence rebuilt from the record


class SheddingMonitor:
    def __init__(self, config: SheddingConfig, now: float, *, resume: Resume | None = None) -> None:
        self.config = config
        self.period = config.sample_period
        self.sites = {s.name: SiteState(s) for s in config.sites}
        self._by_ca = {ca: s.name for s in config.sites for ca in s.common_addresses}
        self._by_ioa = {
            s.name: {s.points.total_power: "total", **{i: "load" for i in s.points.loads},
                     **{i: "breaker" for i in s.points.breakers},
                     **({s.points.lock: "lock"} if s.points.lock is not None else {}),
                     **({s.points.grid_connection: "grid"} if s.points.grid_connection is not None else {})}
            for s in config.sites
        }  # fmt: skip
        self.next_slot = math.floor(now / self.period) * self.period + self.period
        self.event: Event | None = None
        self.next_event_id = 1
        self.last_verdicts: dict[str, SiteVerdict] = {}
        self.decode_errors = 0
        self.interruptions: list[Interruption] = []  # recent ones: they mark slots and new events
        self.incomplete_slots = 0  # site slots closed while copies may have been lost
        self._records: list[Record] = []
        if resume is not None:
            self._resume(resume, now)

    def _resume(self, resume: Resume, now: float) -> None:
        oldest = math.floor((now - MAX_CATCH_UP) / self.period) * self.period
        self.next_slot = max(resume.next_slot, oldest)
        self.next_event_id = resume.next_event_id
        for name, signals in resume.signals.items():
            state = self.sites.get(name)
            if state is None:
                continue  # a site no longer monitored
            for point, ioa, change in signals:
                if point == "breaker":
                    state.breakers[ioa] = change
                elif point == "lock":
                    state.lock = change
                elif point == "grid":
                    state.grid = change
        event = resume.event
        if event is not None and all(name in self.sites for name in event.sites):
            self.event = event

    def take_records(self) -> list[Record]:
        records, self._records = self._records, []
        return records

    # ------------------------------------------------------------------ inputs
    def site_asdu(self, site: str, asdu: bytes, at: float) -> None:
        self._site_asdu(site, asdu, at, applied=False)

    def site_values(self, site: str, asdu: bytes, at: float) -> None:
        self._site_asdu(site, asdu, at, applied=True)

    def _site_asdu(self, site: str, asdu: bytes, at: float, applied: bool) -> None:
        state = self.sites.get(site)
        if state is None:
            return
        if not applied:
            self.tick(at)
        try:
            decoded = decode_asdu(asdu)
        except (DecodeError, AsduError):
            self.decode_errors += 1
            return
        points = self._by_ioa[site]
        for obj in decoded.objects:
            kind = points.get(obj.address)
            if kind is None:
                continue
            tagged = _tag_seconds(obj)
            interrogated = Cause.INTERROGATED_BY_STATION <= decoded.header.cause <= Cause.INTERROGATED_BY_GROUP_16
            if tagged is not None and not interrogated:
                state.skew = at - tagged
                if self.event is not None and site in self.event.sites and not applied:
                    self.event.sites[site].skews.append(state.skew)
            valid = obj.quality is None or not obj.quality.iv
            if kind in ("total", "load"):
                if not isinstance(obj.value, float | int):
                    continue  # not a measured value (the decoder also reads commands, whose value may be None)
                sample = Value(float(obj.value), valid, at, at if tagged is None else tagged)
                if kind == "total":
                    state.total = [*state.total[-1:], sample]
                else:
                    state.loads[obj.address] = sample
            elif not applied:
                self._signal(state, kind, obj, Change(at, tagged, _state(obj), valid), not interrogated)

    def bmi_asdu(self, asdu: bytes, at: float) -> None:
        self.tick(at)
        command = _command(asdu)
        if command is None:
            return
        ca, ioa, on = command
        names = list(self.sites) if ca == BROADCAST_CA else [self._by_ca[ca]] if ca in self._by_ca else []
        for name in names:
            points = self.sites[name].site.points
            if ioa == points.breaker_command and not on:
                self._shed(name, at, at, "command", at)
            elif ioa == points.release_command and on:
                self._release(name, at)

    def trip(self, group: str, at: float) -> None:
        self.tick(at)
        for name, state in self.sites.items():
            if state.site.trip_group == group:
                self._shed(name, at, at, f"trip {group}", at)

    def tick(self, at: float) -> None:
        while self.next_slot <= at:
            self._close_slot(self.next_slot)
            self.next_slot += self.period

    def interrupted(self, interruption: Interruption) -> None:
        """Copies in the span may have been lost (lost=0: a restart that lost nothing, noted)."""
        self._records.append(InterruptionRow(interruption, self.period))
        if interruption.lost == 0:
            return
        horizon = interruption.end - MAX_AGE_PERIODS * self.period
        self.interruptions = [i for i in self.interruptions if i.end > horizon] + [interruption]
        event = self.event
        for evidence in event.sites.values() if event is not None else ():
            if evidence.release_at is None:
                evidence.interruptions.append(interruption)

    # ------------------------------------------------------------------ events
    def _signal(self, state: SiteState, kind: str, obj: InformationObject, change: Change, spontaneous: bool) -> None:
        name = state.site.name
        self._records.append(ChangeRow(name, obj.address, kind, change))
        if kind == "breaker":
            was = state.breakers.get(obj.address)
            state.breakers[obj.address] = change
            # An opening reported as it happens; an interrogation answer is a state, not a change.
            opened = change.valid and change.state is False and (was is None or was.state is not False)
            if opened and spontaneous:
                self._shed(name, change.at, None, "breaker", change.received)
        elif kind == "lock":
            state.lock = change
        else:
            state.grid = change
        event = self.event
        if event is not None and name in event.sites:
            evidence = event.sites[name]
            if evidence.release_at is None:
                if kind == "breaker":
                    evidence.breakers.setdefault(obj.address, []).append(change)
                elif kind == "lock" and evidence.lock is not None:
                    evidence.lock.append(change)
                elif kind == "grid" and evidence.grid is not None:
                    evidence.grid.append(change)

    def _shed(self, name: str, start: float, command_at: float | None, trigger: str, observed: float) -> None:
        event = self.event
        if event is None:
            event = self.event = Event(self.next_event_id, start, trigger)
            self.next_event_id += 1
        evidence = event.sites.get(name)
        if evidence is not None:
            # A command or trip seen after the site's breaker already reported open (a trip
            # counter is polled): the command time is now known, the opening judged from it.
            if command_at is not None and evidence.command_at is None:
                evidence.command_at = command_at
                evidence.start = min(evidence.start, start)
                self._records.append(self._site_row(event, name))
            return
        state = self.sites[name]
        site = state.site
        look_back = start - MAX_AGE_PERIODS * self.period  # a loss there touches P0
        evidence = SiteEvidence(
            start=start,
            command_at=command_at,
            before=self._sample(state, start),
            breakers={ioa: [] for ioa in site.points.breakers},
            lock=None if site.points.lock is None else [],
            locked_at_start=state.lock is not None and bool(state.lock.state),
            grid=None if site.points.grid_connection is None else [],
            interruptions=[i for i in self.interruptions if i.end > look_back],
        )
        event.sites[name] = evidence  # an opening that started it is appended by _signal
        event.joined[name] = observed
        self._records.append(EventRow(event.event_id, event.start, None, event.trigger, tuple(event.sites)))
        self._records.append(self._site_row(event, name))

    def _site_row(self, event: Event, name: str) -> EventSiteRow:
        e = event.sites[name]
        worst = max(e.skews, key=abs) if e.skews else None
        return EventSiteRow(event.event_id, name, event.joined[name], e.start, e.command_at, e.release_at, e.before,
                            e.locked_at_start, worst)  # fmt: skip

    def _release(self, name: str, at: float) -> None:
        event = self.event
        if event is None or name not in event.sites or event.sites[name].release_at is not None:
            return
        event.sites[name].release_at = at
        self._records.append(self._site_row(event, name))
        self._judge(event, at)
        if all(e.release_at is not None for e in event.sites.values()):
            self._records.append(EventRow(event.event_id, event.start, at, event.trigger, tuple(event.sites)))
            self.event = None

    def _judge(self, event: Event, now: float) -> None:
        verdicts = []
        for name, evidence in event.sites.items():
            verdict = judge_site(self.sites[name].site, evidence, now)
            self.last_verdicts[name] = verdict
            verdicts.append(verdict)
            self._records.append(VerdictRow(event.event_id, verdict))
            if evidence.release_at is None and evidence.skews:  # keep the worst skew for a restart
                self._records.append(self._site_row(event, name))
        aggregate = judge_aggregate(verdicts, event.sites)
        final = all(v.final for v in verdicts)
        self._records.append(AggregateRow(event.event_id, aggregate.status, final, aggregate.failed_sites))

    # ------------------------------------------------------------------ samples
    def _sample(self, state: SiteState, at: float) -> Sample:
        oldest = at - MAX_AGE_PERIODS * self.period
        total = next((v for v in reversed(state.total) if oldest < v.received <= at), None)
        loads = [state.loads.get(ioa) for ioa in state.site.points.loads]
        fresh = [v for v in loads if v is not None and oldest < v.received <= at]
        grid = None
        if state.grid is not None and state.grid.valid:
            grid = state.grid.state
        used = ([total] if total is not None else []) + (fresh if len(fresh) == len(loads) else [])
        complete = not any(i.start <= at and i.end > oldest for i in self.interruptions)
        return Sample(
            at,
            None if total is None else total.value,
            total is not None and total.valid,
            sum(v.value for v in fresh) if len(fresh) == len(loads) else None,
            len(fresh) == len(loads) and all(v.valid for v in fresh),
            grid,
            min((v.taken for v in used), default=None),
            complete,
        )

    def _close_slot(self, at: float) -> None:
        event = self.event
        for name, state in self.sites.items():
            sample = self._sample(state, at)
            state.last_sample = sample
            self.incomplete_slots += not sample.complete
            breakers = [c.state for c in state.breakers.values() if c.valid]
            closed = None if not breakers else any(breakers)  # 5.1.5: closed if any is closed
            self._records.append(SampleRow(name, sample, closed, state.skew))
            if event is not None and name in event.sites:
                evidence = event.sites[name]
                if evidence.release_at is None and at > evidence.start:
                    evidence.samples.append(sample)
        if event is None:
            return
        if any(e.command_at is not None for e in event.sites.values()):
            self._judge(event, at)
        elif at - event.start > UNCOMMANDED_AFTER:
            self._records.append(EventRow(event.event_id, event.start, at, UNCOMMANDED, tuple(event.sites)))
            self.event = None

    # ------------------------------------------------------------------ metrics
    def credited(self) -> dict[str, tuple[float, float | None]]:
        """Per site: (credited interruptible power, raw load sum) of the last slot."""
        return {
            name: (s.last_sample.credited_load, s.last_sample.loads) if s.last_sample else (0.0, None)
            for name, s in self.sites.items()
        }


def _tag_seconds(obj: InformationObject) -> float | None:
    if obj.time is None or obj.time.invalid:
        return None
    moment = obj.time.datetime()
    return None if moment is None else moment.timestamp()


def _state(obj: InformationObject) -> bool | None:
    if isinstance(obj.value, bool):
        return obj.value  # single point
    if obj.value in (1, 2):  # double point: 1 OFF, 2 ON
        return obj.value == 2
    return None  # indeterminate or intermediate


def _command(asdu: bytes) -> tuple[int, int, bool] | None:
    """(CA, IOA, ON?) of a single or double command's execute activation, else None."""
    try:
        header = AsduHeader.parse(asdu)
    except AsduError:
        return None
    double = _COMMAND_TYPES.get(header.type_id)
    if double is None or header.cause != Cause.ACTIVATION or header.negative or header.test or len(asdu) < 10:
        return None
    ioa = int.from_bytes(asdu[6:9], "little")
    octet = asdu[9]
    if octet & 0x80:  # S/E: a select; the execute follows
        return None
    if double:
        state = octet & 0x03
        if state not in (1, 2):
            return None
        return header.common_address, ioa, state == 2
    return header.common_address, ioa, bool(octet & 0x01)
