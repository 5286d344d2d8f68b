"""Primary/backup path selection for one protected link (sans-I/O, time passed in).

One `Failover` object decides which of two paths (primary, backup) carries the
traffic of one protected link (the uplink to the BMI, or the link to one site).
It does no I/O and reads no clock: the driver feeds it what it observed, always
with `now` (seconds, any monotonic origin), and acts on the events it returns.

Inputs
    link_changed(role, up, now)   carrier / operational state from netlink
    probe_ok(role, now)           an active probe on that path was answered
    probe_missed(role, now)       an active probe got no answer in time
    handle_timer(now)             the deadline from get_timer() has passed
    request_failback(now)         an operator asks to return to the primary

Outputs (returned as a list by each input)
    PathDown / PathUp             a path's health changed (for logs and metrics)
    Switched                      traffic must now go over `to`: install the routes
    AllPathsDown                  no healthy path left; routes are left where they were
    FailbackRefused               a manual fail-back could not be done, with why

Rules
    * A path is healthy when its carrier is up, it is confirmed (a probe answered
      since it last went down; at start-up it is assumed confirmed so traffic flows
      at once) and fewer than `misses` probes in a row went unanswered.
    * The active path failing moves traffic to the other path at once if that one
      is healthy.
    * From the backup, traffic returns to the primary after the primary has been
      healthy without a break for `hold_time` (FailbackMode.AUTO), or only on
      request_failback() (FailbackMode.MANUAL). Either mode returns to a healthy
      primary at once if the backup itself fails.
    * With both paths down the active role is kept (so TCP keeps retransmitting
      toward a route that may come back) and the first path to become healthy
      gets the traffic, without waiting for a hold time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    PRIMARY = "primary"
    BACKUP = "backup"

    @property
    def other(self) -> Role:
        return Role.BACKUP if self is Role.PRIMARY else Role.PRIMARY


class FailbackMode(enum.Enum):
    AUTO = "auto"
    MANUAL = "manual"


class Reason(enum.Enum):
    """Why a path went down or why traffic moved."""

    CARRIER_DOWN = "carrier-down"  # netlink: link or carrier lost
    PROBE_LOSS = "probe-loss"  # N probes in a row unanswered
    HOLD_ELAPSED = "hold-elapsed"  # primary healthy for hold_time: fail-back
    MANUAL = "manual"  # operator asked for fail-back
    RECOVERED = "recovered"  # out of an all-paths-down state


@dataclass(frozen=True, slots=True)
class FailoverParams:
    misses: int = 3  # consecutive unanswered probes that mark a path down
    hold_time: float = 10.0  # seconds the primary must stay healthy before fail-back
    failback: FailbackMode = FailbackMode.AUTO


@dataclass(frozen=True, slots=True)
class PathDown:
    role: Role
    reason: Reason
    at: float
    # Last moment the path was known good (the previous answered probe, or the
    # carrier event itself): the failure happened between this and `at`.
    last_good: float


@dataclass(frozen=True, slots=True)
class PathUp:
    role: Role
    at: float


@dataclass(frozen=True, slots=True)
class Switched:
    """Traffic moves from `frm` to `to`; the driver installs the routes now."""

    frm: Role
    to: Role
    reason: Reason
    at: float
    # Upper bound of the interruption caused by the failure that led here:
    # from the last moment the failed path was known good to this switch.
    # None for a switch away from a healthy path (fail-back).
    outage: float | None
    detection: float | None  # from the last good moment to the path being declared down


@dataclass(frozen=True, slots=True)
class AllPathsDown:
    at: float
    active: Role  # role whose routes stay installed meanwhile


@dataclass(frozen=True, slots=True)
class FailbackRefused:
    at: float
    why: str


Event = PathDown | PathUp | Switched | AllPathsDown | FailbackRefused


@dataclass(slots=True)
class _Path:
    carrier: bool
    confirmed: bool = True  # optimistic at start-up, see module doc
    misses: int = 0
    last_good: float = 0.0  # last answered probe or carrier-up
    healthy_since: float | None = None
    down_reason: Reason | None = None
    down_last_good: float = 0.0

    def healthy(self, misses_limit: int) -> bool:
        return self.carrier and self.confirmed and self.misses < misses_limit


class Failover:
    """Path selection for one protected link; see the module docstring."""

    def __init__(
        self,
        params: FailoverParams,
        now: float,
        primary_up: bool = True,
        backup_up: bool = True,
        resume: Role | None = None,
    ) -> None:
        """`resume`: the path a previous run left active (the driver's state file).
        Traffic stays there if its carrier is up, and the other path must answer a
        probe before it counts as healthy: a restart must not send traffic into the
        path that failed before it."""
        if params.misses < 1:
            raise ValueError("misses must be at least 1")
        if params.hold_time < 0:
            raise ValueError("hold_time must not be negative")
        self.params = params
        self._paths = {
            Role.PRIMARY: _Path(carrier=primary_up, last_good=now),
            Role.BACKUP: _Path(carrier=backup_up, last_good=now),
        }
        if resume is not None and self._paths[resume].carrier:
            self._paths[resume.other].confirmed = False
        for path in self._paths.values():
            path.healthy_since = now if path.healthy(params.misses) else None
        # Start on the resumed path, else on the primary unless only the backup is usable.
        if resume is not None and self._healthy(resume):
            self.active = resume
        elif not self._healthy(Role.PRIMARY) and self._healthy(Role.BACKUP):
            self.active = Role.BACKUP
        else:
            self.active = Role.PRIMARY
        self.all_down = not (self._healthy(Role.PRIMARY) or self._healthy(Role.BACKUP))
        self._all_down_since: float | None = now if self.all_down else None
        self.history: list[Switched] = []

    # ------------------------------------------------------------------ queries

    def healthy(self, role: Role) -> bool:
        return self._healthy(role)

    def _healthy(self, role: Role) -> bool:
        return self._paths[role].healthy(self.params.misses)

    def get_timer(self) -> float | None:
        """Next moment handle_timer() must be called, or None."""
        if (
            self.params.failback is FailbackMode.AUTO
            and self.active is Role.BACKUP
            and not self.all_down
            and self._healthy(Role.PRIMARY)
        ):
            since = self._paths[Role.PRIMARY].healthy_since
            assert since is not None
            return since + self.params.hold_time
        return None

    # ------------------------------------------------------------------ inputs

    def link_changed(self, role: Role, up: bool, now: float) -> list[Event]:
        path = self._paths[role]
        if path.carrier == up:
            return []
        was = self._healthy(role)
        path.carrier = up
        if up:
            # A path that comes back must answer a probe before it carries
            # traffic: carrier alone does not prove the far end is reachable.
            path.confirmed = False
            path.misses = 0
        return self._after_change(role, was, now, Reason.CARRIER_DOWN, last_good=now)

    def probe_ok(self, role: Role, now: float) -> list[Event]:
        path = self._paths[role]
        was = self._healthy(role)
        path.misses = 0
        path.last_good = now
        if path.carrier:
            path.confirmed = True
        return self._after_change(role, was, now, Reason.PROBE_LOSS, last_good=now)

    def probe_missed(self, role: Role, now: float) -> list[Event]:
        path = self._paths[role]
        was = self._healthy(role)
        path.misses += 1
        return self._after_change(role, was, now, Reason.PROBE_LOSS, last_good=path.last_good)

    def handle_timer(self, now: float) -> list[Event]:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        return [self._switch(Role.PRIMARY, Reason.HOLD_ELAPSED, now, failed=None)]

    def request_failback(self, now: float) -> list[Event]:
        if self.active is Role.PRIMARY:
            return [FailbackRefused(now, "already on the primary path")]
        if not self._healthy(Role.PRIMARY):
            return [FailbackRefused(now, "primary path is not healthy")]
        return [self._switch(Role.PRIMARY, Reason.MANUAL, now, failed=None)]

    # ------------------------------------------------------------------ logic

    def _after_change(self, role: Role, was: bool, now: float, down_reason: Reason, last_good: float) -> list[Event]:
        path = self._paths[role]
        now_healthy = self._healthy(role)
        events: list[Event] = []
        if was and not now_healthy:
            path.healthy_since = None
            path.down_reason = down_reason
            path.down_last_good = last_good
            events.append(PathDown(role, down_reason, now, last_good))
            if self.active is role:
                if self._healthy(role.other):
                    events.append(self._switch(role.other, down_reason, now, failed=path))
                else:
                    self.all_down = True
                    self._all_down_since = now
                    events.append(AllPathsDown(now, self.active))
        elif not was and now_healthy:
            path.healthy_since = now
            events.append(PathUp(role, now))
            if self.all_down:
                self.all_down = False
                failed = self._paths[self.active]
                since = self._all_down_since
                self._all_down_since = None
                events.append(self._switch(role, Reason.RECOVERED, now, failed=failed, down_at=since))
            elif self.active is not role and not self._healthy(self.active):
                # Cannot happen while all_down is tracked, kept for safety.
                events.append(self._switch(role, Reason.RECOVERED, now, failed=None))
        return events

    def _switch(
        self,
        to: Role,
        reason: Reason,
        now: float,
        failed: _Path | None,
        down_at: float | None = None,
    ) -> Switched:
        frm = self.active
        self.active = to
        outage: float | None = None
        detection: float | None = None
        if failed is not None:
            outage = now - failed.down_last_good
            detection = (down_at if down_at is not None else now) - failed.down_last_good
        event = Switched(frm, to, reason, now, outage, detection)
        self.history.append(event)
        return event
