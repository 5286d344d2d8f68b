"""Which UPDC troubles are incidents (annex A40 5.7.1), sans-I/O: events and `now` in,
`Opened` / `Restored` actions out; it reports its next deadline (`get_timer()`) and is
told when it passes (`handle_timer(now)`), like the relay core and netconfig's failover.
All times are wall-clock seconds (the register and the notices are in wall time).

Rules (thresholds from the `incidents:` section; docs/incidents.md says why):

- unreachable: the relay has no connection to the site, or netd reports both of its
  paths down, for longer than `unreachable_grace` (20 s: footnote 2 tolerates shorter
  disconnections, the time a switch to the backup circuit takes). The start is the
  first evidence: netd's both-paths-down, else the last ASDU heard on a connection that
  timed out, else the disconnection.
- restart: the UPDC sent an end of initialisation (type 70) or reset its connection;
  at once (5.2 lists a restart as a failure by itself); restored when it is started again.
- measures: a watched measure stays invalid (IV) or none arrives while the site is
  started, for longer than `measure_grace` (plus LINK_SUPERVISION if the site sent
  nothing else either: a dead link is then the unreachable rule's to judge).
- skew: time tags off by more than the site's limit (5 ms instantaneous, 5.4), still off
  on a sample `skew_grace` after the first; samples in the first seconds after a start
  are not judged (the UPDC sends its backlog of old events then).
- bmi_link: no started BMI connection for longer than `bmi_grace`.

Each (site, kind) has one `Tracker`: CLEAR -> PENDING (bad, grace running) -> OPEN ->
RECOVERING (good, `recovery_hold` running) -> CLEAR, with its start at the first bad
evidence and its end at the first good one; trouble again while RECOVERING continues the
same incident (flapping merged). Nothing opens inside a planned maintenance window of
the site; trouble that outlasts the window opens with its start at the window's end.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from concentrator.iec104.asdu import AsduError, Cause
from concentrator.iec104.decode import DecodeError, ValueKind, decode_asdu

from .config import IncidentsConfig

BMI = "uplink"  # the site name under which BMI link incidents are kept (netd's link name)
SKEW_SETTLE = 10.0  # s after a start during which time tags are not judged (the UPDC's backlog)
# s the relay's link supervision takes to give up on a silent connection (IEC defaults
# t3 20 s + t1 15 s): a site silent altogether is the unreachable rule's, not missing measures
LINK_SUPERVISION = 35.0
EVIDENCE_KEPT = 200  # evidence lines kept per site
MEASURED = frozenset({ValueKind.NORMALISED, ValueKind.SCALED, ValueKind.FLOAT, ValueKind.NORMALISED_NO_QUALITY})


class Kind(StrEnum):
    UNREACHABLE = "unreachable"
    RESTART = "restart"
    MEASURES = "measures"
    SKEW = "skew"
    BMI_LINK = "bmi_link"
    MAINTENANCE = "maintenance"  # planned (5.7.2): from `concentrator maintenance plan`, not detected


class LinkState(StrEnum):
    CONNECTED = "connected"
    STARTED = "started"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"  # the BMI: no started connection left


class Phase(Enum):
    CLEAR = "clear"
    PENDING = "pending"
    OPEN = "open"
    RECOVERING = "recovering"


@dataclass(frozen=True)
class Opened:
    site: str
    kind: Kind
    start: float
    detected: float
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Restored:
    site: str
    kind: Kind
    end: float
    proposed_it: str
    proposed_en: str


Action = Opened | Restored


@dataclass
class Tracker:
    site: str
    kind: Kind
    grace: float
    hold: float
    confirm_on_evidence: bool = False  # skew: opens on a bad sample, never on a timer
    phase: Phase = Phase.CLEAR
    bad_since: float = 0.0
    good_since: float = 0.0
    opened_at: float = 0.0

    def deadline(self) -> float | None:
        if self.phase is Phase.PENDING and not self.confirm_on_evidence:
            return self.bad_since + self.grace
        if self.phase is Phase.RECOVERING:
            return self.good_since + self.hold
        return None


@dataclass
class _Site:
    name: str
    connected: bool = False
    started: bool = False
    started_at: float = 0.0
    connected_at: float = 0.0
    paths_down: bool = False
    last_heard: float | None = None  # last ASDU on the current connection
    last_measure: float | None = None
    invalid: set[int] = field(default_factory=set)
    evidence: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=EVIDENCE_KEPT))


class Detector:
    def __init__(self, config: IncidentsConfig, now: float,
                 open_incidents: Mapping[tuple[str, Kind], float] | None = None) -> None:  # fmt: skip
        """`open_incidents`: (site, kind) -> start of the incidents the register holds open
        (a restart of the appliance): they stay open until their cause is seen gone."""
        self.config = config
        self.sites = {s.name: _Site(s.name) for s in config.sites}
        self.trackers: dict[tuple[str, Kind], Tracker] = {}
        self._by_site: dict[str, list[Tracker]] = {}
        hold = config.recovery_hold
        for s in config.sites:
            self._add(s.name, Kind.UNREACHABLE, config.unreachable_grace, hold)
            self._add(s.name, Kind.RESTART, 0.0, hold)
            self._add(s.name, Kind.MEASURES, config.measure_grace, hold)
            if s.skew_limit is not None:
                self._add(s.name, Kind.SKEW, config.skew_grace, hold, confirm_on_evidence=True)
        if config.bmi_grace is not None:
            self._add(BMI, Kind.BMI_LINK, config.bmi_grace, hold)
            self.sites[BMI] = _Site(BMI)
        self.maintenance: list[tuple[str, float, float]] = []
        self.bmi_started = False
        self._now = now
        self._actions: deque[Action] = deque()
        for key, start in (open_incidents or {}).items():
            tracker = self.trackers.get(key)
            if tracker is not None:
                tracker.phase, tracker.opened_at, tracker.bad_since = Phase.OPEN, now, start
        # At start nothing is connected yet: each site (and the BMI) is bad from now.
        for site in self.sites:
            if site == BMI:
                self._set(BMI, Kind.BMI_LINK, True, now)
            else:
                self._set(site, Kind.UNREACHABLE, True, now)
        self.handle_timer(now)

    def _add(self, site: str, kind: Kind, grace: float, hold: float, confirm_on_evidence: bool = False) -> None:
        tracker = Tracker(site, kind, grace, hold, confirm_on_evidence)
        self.trackers[(site, kind)] = tracker
        self._by_site.setdefault(site, []).append(tracker)

    # ------------------------------------------------------------------ driver API
    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        deadlines = [d for t in self.trackers.values() if (d := t.deadline()) is not None]
        for name, site in self.sites.items():
            tracker = self.trackers.get((name, Kind.MEASURES))
            watched = tracker is not None and tracker.phase in (Phase.CLEAR, Phase.RECOVERING)
            if watched and site.started and not site.paths_down and not site.invalid:
                if (missing := self._missing_deadline(name, site)) is not None:
                    deadlines.append(missing)
        for _name, start, end in self.maintenance:
            deadlines.extend(t for t in (start, end) if t > self._now)
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = max(self._now, now)
        for name, site in self.sites.items():
            if (name, Kind.MEASURES) in self.trackers and site.started and not site.invalid:
                missing = self._missing_deadline(name, site)
                if missing is not None and now >= missing and not site.paths_down:
                    since = self._measures_since(name, site)
                    assert since is not None
                    self._note(site, since, "no measure received")
                    self._set(name, Kind.MEASURES, True, since)
        for tracker in self.trackers.values():
            self._tick(tracker, now)

    def _tick_site(self, name: str, now: float) -> None:
        """The deadlines of one site only: an input touches its own site (the ticker
        runs `handle_timer` for all; per ASDU that would cost O(sites))."""
        self._now = max(self._now, now)
        for tracker in self._by_site.get(name, ()):
            self._tick(tracker, now)

    def set_maintenance(self, windows: Iterable[tuple[str, float, float]], now: float) -> None:
        """The planned maintenance windows (site, start, end) known now."""
        self.maintenance = sorted(windows, key=lambda w: w[1])
        self.handle_timer(now)

    # ------------------------------------------------------------------ inputs
    def link(self, site_name: str | None, state: LinkState, detail: str, now: float) -> None:
        """The relay's view of a link: a site's (connected, started, disconnected with its
        cause) or, with `site_name` None, the BMI's (started, stopped)."""
        if site_name is None:
            self.bmi_started = state is LinkState.STARTED
            if BMI in self.sites:
                self._note(self.sites[BMI], now, f"BMI {state.value} ({detail})" if detail else f"BMI {state.value}")
                self._set(BMI, Kind.BMI_LINK, not self.bmi_started, now)
            self._tick_site(BMI, now)
            return
        site = self.sites.get(site_name)
        if site is None:
            return
        if state is LinkState.CONNECTED:
            site.connected, site.connected_at, site.last_heard = True, now, None
            self._note(site, now, f"UPDC reconnected ({detail})" if detail else "UPDC reconnected")
        elif state is LinkState.STARTED:
            site.connected = site.started = True
            site.started_at = now
            self._set(site_name, Kind.RESTART, False, now)
        elif state is LinkState.DISCONNECTED:
            first = now
            if detail.startswith("t1_expired") and site.last_heard is not None:
                # Silent since the last ASDU, but a quiet UPDC answers TESTFR: the link
                # was still alive t3 + t1 before this expiry at the latest.
                first = max(site.last_heard, now - LINK_SUPERVISION)
            site.connected = site.started = False
            self._note(site, now, f"connection lost: {detail}")
            if detail.startswith("connection_error") and "Reset" in detail:
                self._note(site, now, "UPDC reset its connection (restart)")
                self._set(site_name, Kind.RESTART, True, now)
            self._set(site_name, Kind.UNREACHABLE, True, first)
        self._set(site_name, Kind.UNREACHABLE, not site.connected or site.paths_down, now)
        self._tick_site(site_name, now)

    def paths(self, site_name: str, all_down: bool, now: float) -> None:
        """netd's state: are both paths of the site's link down?"""
        site = self.sites.get(site_name)
        if site is None or site.paths_down == all_down:
            return
        site.paths_down = all_down
        self._note(site, now, "primary and backup links down" if all_down else "a link is up again")
        self._set(site_name, Kind.UNREACHABLE, all_down or not site.connected, now)
        self._tick_site(site_name, now)

    def asdu(self, site_name: str, asdu: bytes, now: float) -> None:
        """A copy of an ASDU the site sent (forwarded to the BMI)."""
        site = self.sites.get(site_name)
        if site is None:
            return
        site.last_heard = now
        try:
            decoded = decode_asdu(asdu)
        except (DecodeError, AsduError):
            return
        if decoded.kind is ValueKind.END_OF_INIT:
            self._note(site, now, "UPDC sent end of initialisation (restart)")
            self._set(site_name, Kind.RESTART, True, now)
            self._tick_site(site_name, now)
            if site.started:
                self._set(site_name, Kind.RESTART, False, now)
            return
        settings = self.config.site(site_name)
        assert settings is not None
        cause = decoded.header.cause
        interrogated = Cause.INTERROGATED_BY_STATION <= cause <= Cause.INTERROGATED_BY_GROUP_16
        for obj in decoded.objects:
            if decoded.kind in MEASURED and (not settings.measures or obj.address in settings.measures):
                site.last_measure = now
                valid = obj.quality is None or not obj.quality.iv
                if valid:
                    site.invalid.discard(obj.address)
                elif obj.address not in site.invalid:
                    site.invalid.add(obj.address)
                    self._note(site, now, f"measure {obj.address} invalid")
            if settings.skew_limit is not None and obj.time is not None and not obj.time.invalid and not interrogated:
                moment = obj.time.datetime(datetime.UTC)
                if moment is not None and now - site.started_at >= SKEW_SETTLE:
                    skew = now - moment.timestamp()
                    bad = abs(skew) > settings.skew_limit
                    if bad:
                        self._note(site, now, f"time tag off by {skew * 1000:.1f} ms")
                    self._set(site_name, Kind.SKEW, bad, now)
        if (site_name, Kind.MEASURES) in self.trackers and site.started:
            self._set(site_name, Kind.MEASURES, bool(site.invalid), now)
        self._tick_site(site_name, now)

    # ------------------------------------------------------------------ trackers
    def _measures_since(self, name: str, site: _Site) -> float | None:
        """Since when no watched measure arrived (None: not watched yet: with no IOAs
        listed, only once the site has sent a measured value)."""
        settings = self.config.site(name)
        if settings is None:
            return None
        if site.last_measure is None:
            return site.started_at if settings.measures else None
        return max(site.last_measure, site.started_at)

    def _missing_deadline(self, name: str, site: _Site) -> float | None:
        since = self._measures_since(name, site)
        if since is None:
            return None
        heard = site.last_heard is not None and site.last_heard > since
        return since + self.config.measure_grace + (0.0 if heard else LINK_SUPERVISION)

    def _set(self, site: str, kind: Kind, bad: bool, at: float) -> None:
        tracker = self.trackers.get((site, kind))
        if tracker is None:
            return
        phase = tracker.phase
        if bad:
            if phase is Phase.CLEAR:
                tracker.phase, tracker.bad_since = Phase.PENDING, at
            elif phase is Phase.PENDING:
                tracker.bad_since = min(tracker.bad_since, at)
                if tracker.confirm_on_evidence and at >= tracker.bad_since + tracker.grace:
                    self._open(tracker, at)
            elif phase is Phase.RECOVERING:
                tracker.phase = Phase.OPEN  # trouble again before the hold ended: the same incident
        elif phase is Phase.PENDING:
            tracker.phase = Phase.CLEAR
        elif phase is Phase.OPEN:
            tracker.phase, tracker.good_since = Phase.RECOVERING, at

    def _tick(self, tracker: Tracker, now: float) -> None:
        deadline = tracker.deadline()
        if deadline is None or now < deadline:
            return
        if tracker.phase is Phase.PENDING:
            self._open(tracker, now)
        elif tracker.phase is Phase.RECOVERING:
            tracker.phase = Phase.CLEAR
            site = self.sites[tracker.site]
            it, en = propose(tracker.kind, list(site.evidence), tracker.bad_since, tracker.good_since)
            self._actions.append(Restored(tracker.site, tracker.kind, tracker.good_since, it, en))

    def _open(self, tracker: Tracker, now: float) -> None:
        window = self._window(tracker.site, now)
        if window is not None:
            # Planned work: no incident now; trouble still there at the window's end
            # opens one, starting then.
            tracker.bad_since = max(tracker.bad_since, window[1])
            if tracker.confirm_on_evidence or now < tracker.bad_since + tracker.grace:
                return
        for name, start, end in self.maintenance:
            if name == tracker.site and start <= tracker.bad_since < end:
                tracker.bad_since = end
        tracker.phase, tracker.opened_at = Phase.OPEN, now
        site = self.sites[tracker.site]
        evidence = tuple(f"{_hms(t)} {text}" for t, text in site.evidence if t >= tracker.bad_since - 1.0)
        self._actions.append(Opened(tracker.site, tracker.kind, tracker.bad_since, now, evidence))

    def _window(self, site: str, now: float) -> tuple[float, float] | None:
        for name, start, end in self.maintenance:
            if name == site and start <= now < end:
                return start, end
        return None

    def _note(self, site: _Site, at: float, text: str) -> None:
        site.evidence.append((at, text))


def _hms(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S")


def propose(kind: Kind, evidence: list[tuple[float, str]], start: float, end: float) -> tuple[str, str]:
    """The operator's "type and cause" (5.7.1 II), proposed from the evidence, in Italian
    and English; the holder may replace it before the closing notice."""
    during = [(t, text) for t, text in evidence if start - 1.0 <= t <= end + 1.0]
    texts = [text for _t, text in during]
    span = f"{_hms(start)}-{_hms(end)} UTC"
    restarted = any("restart" in text for text in texts)
    if kind is Kind.UNREACHABLE:
        both = any(text == "primary and backup links down" for text in texts)
        it = ("collegamenti primario e di backup fuori servizio " if both else "UPDC non raggiungibile ") + span
        en = ("primary and backup links down " if both else "UPDC unreachable ") + span
        if any(text.startswith("UPDC reconnected") for text in texts):
            it, en = it + ", UPDC ricollegato", en + ", UPDC reconnected"
        it += ", riavvio dell'UPDC" if restarted else ", nessun riavvio"
        en += ", UPDC restarted" if restarted else ", no restart"
        return it, en
    if kind is Kind.RESTART:
        return f"riavvio dell'UPDC {span}", f"UPDC restart {span}"
    if kind is Kind.MEASURES:
        invalid = sorted({text.split()[1] for text in texts if text.startswith("measure ")})
        if invalid:
            return (f"misure {', '.join(invalid)} con qualità invalida {span}",
                    f"measures {', '.join(invalid)} with invalid quality {span}")  # fmt: skip
        return f"misure non ricevute {span}", f"measures not received {span}"
    if kind is Kind.SKEW:
        worst = [text for text in texts if text.startswith("time tag off")]
        detail = f" ({worst[-1].removeprefix('time tag off by ')})" if worst else ""
        return (f"errore di sincronizzazione dell'UPDC oltre il limite{detail} {span}",
                f"UPDC clock error over the limit{detail} {span}")  # fmt: skip
    if kind is Kind.BMI_LINK:
        return f"colloquio con il BMI interrotto {span}", f"link to the BMI not started {span}"
    return f"manutenzione programmata {span}", f"planned maintenance {span}"
