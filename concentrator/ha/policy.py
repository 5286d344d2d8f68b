"""Whether this appliance of a pair may be active (sans-I/O, time passed in).

`HaPolicy` decides; the supervisor (supervisor.py) carries out what it decides: it
runs keepalived and the relay, asks the peer and writes the track file. The policy reads
no clock and does no I/O: every input comes with `now` (seconds, monotonic), and every
input returns the actions to take, like netconfig/failover.py and the relay core.

Inputs
    start(now)                      the supervisor runs; a relay is to be loaded
    vrrp_changed(vrrp, now)         keepalived reported a state of the sync group
    peer_answered(ask, answer, now) the answer to an `AskPeer(ask)` (both sides asked)
    relay_exited(now)               the relay exited by itself (not stopped on purpose)
    handle_timer(now)               the deadline from get_timer() has passed

Outputs
    AskPeer(ask)            ask the peer's status port on both sides, answer with peer_answered
    SetFence(on)            the track file: on puts keepalived in FAULT (all addresses released)
    LoadRelay(start)        stop the current relay if any, load a new one, start it if `start`
    StartRelay(promoted_at, stale_bmi)
                            write the start byte to the loaded relay; nudge the BMI's
                            connections to the old master (`stale_bmi`)

Rules (docs/ha.md, "Split brain")
    * Hold: while standby or fault, the peer is asked every FENCE_POLL. While it says its
      relay is active, this appliance is held out of VRRP (fence on), unless the fail-back
      policy lets it take the role back (preempt, and a higher priority than the peer's).
      The hold is released when the peer says "not active" or refuses (its supervisor is
      down), or after RELEASE_MISSES silent rounds (one slow answer must not release it).
    * Promote: on MASTER the peer is asked every PROMOTE_POLL until it is not active, for
      at most HANDOVER (a preempted peer stops its relay within its stop grace). Then the
      relay starts, or, if the peer is still active, this appliance is fenced (no relay,
      fence on) until the peer says its relay is no longer active.
    * Demote: any other VRRP state while active stops the relay and loads a new one.
    * A relay that exits by itself is replaced after RELAY_RESTART, and started if active.
    * Settle: an appliance neither active nor fenced is `fault` when keepalived is in
      FAULT and the hold did not cause it, else `standby`.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .state import HaState, PeerStatus, Role, Vrrp

log = logging.getLogger("ha")

STOP_GRACE = 1.0  # the supervisor's SIGTERM-to-SIGKILL grace when it stops a relay
FENCE_POLL = 0.2  # while not active: how often the peer is asked whether its relay is
PROMOTE_POLL = 0.05  # while promoting: how often the peer is asked whether it stopped
HANDOVER = STOP_GRACE + 0.5  # on MASTER, how long a preempted peer may take to stop its relay
RELEASE_MISSES = 2  # silent rounds before a held standby is released
RELAY_RESTART = 0.5  # a relay that exited by itself is replaced after this
SETTLE_AFTER_RELEASE = 0.5  # keepalived leaves FAULT in a moment; if not, it is a fault of its own


class Ask(enum.Enum):
    """Why the peer is asked: each has its own cadence, and may be under way at once."""

    HOLD = "hold"
    PROMOTE = "promote"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """One round of asking both sides: the peer's status if a side says it is active, and
    whether the round was sure (a side answered or refused) or only silence."""

    active: PeerStatus | None
    sure: bool

    @classmethod
    def from_sides(cls, answers: Iterable[PeerStatus | None]) -> PeerAnswer:
        answers = list(answers)
        active = next((a for a in answers if a is not None and a.active), None)
        return cls(active, any(a is not None for a in answers))


@dataclass(frozen=True, slots=True)
class AskPeer:
    ask: Ask


@dataclass(frozen=True, slots=True)
class SetFence:
    on: bool


@dataclass(frozen=True, slots=True)
class LoadRelay:
    start: bool


@dataclass(frozen=True, slots=True)
class StartRelay:
    promoted_at: float
    stale_bmi: tuple[str, ...]


Action = AskPeer | SetFence | LoadRelay | StartRelay


@dataclass(slots=True)
class _Promotion:
    generation: int
    promoted_at: float


class HaPolicy:
    def __init__(self, state: HaState, *, preempt: bool) -> None:
        self.state = state
        self.preempt = preempt  # ha.preempt is a delay, not `never`: a higher priority takes the role back
        self._generation = 0  # bumped by every state keepalived reports
        self._promotion: _Promotion | None = None
        self._asking: set[Ask] = set()  # asks under way
        self._next_ask: dict[Ask, float] = {}  # when each cadence asks next
        self._silent = 0  # silent hold rounds in a row
        self._peer_bmi: tuple[str, ...] = ()  # the BMI's connections to the peer, last seen while it was active
        self._settle_at: float | None = None
        self._reload_at: float | None = None
        self._relay_loaded = False  # a relay process exists (loaded or running)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        self._relay_loaded = True
        self._next_ask[Ask.HOLD] = now
        return [LoadRelay(start=False), *self.handle_timer(now)]

    def vrrp_changed(self, vrrp: Vrrp, now: float) -> list[Action]:
        self.state.vrrp = vrrp
        self._generation += 1
        actions: list[Action] = []
        if vrrp is Vrrp.MASTER:
            self._promotion = _Promotion(self._generation, now)
            self._next_ask[Ask.PROMOTE] = now
            actions += self.handle_timer(now)
        elif self.state.role is Role.ACTIVE:
            actions.append(self._load_relay(start=False))
            self.state.enter(Role.STANDBY)
        self._settle()
        return actions

    def peer_answered(self, ask: Ask, answer: PeerAnswer, now: float) -> list[Action]:
        self._asking.discard(ask)
        if ask is Ask.HOLD:
            self._next_ask[Ask.HOLD] = now + FENCE_POLL
            return self._hold(answer, now)
        if ask is Ask.PROMOTE:
            return self._promote(answer, now)
        return self._fenced(answer, now)

    def relay_exited(self, now: float) -> list[Action]:
        self._relay_loaded = False
        self.state.relay_exits += 1
        self._reload_at = now + RELAY_RESTART
        log.error("relay exited by itself (%s): replaced in %.1f s", self.state.role.value, RELAY_RESTART)
        return []

    def get_timer(self) -> float:
        pending = [at for ask, at in self._next_ask.items() if ask not in self._asking]
        pending += [at for at in (self._settle_at, self._reload_at) if at is not None]
        return min(pending, default=math.inf)

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for ask, at in list(self._next_ask.items()):
            if at > now or ask in self._asking:
                continue
            if ask is Ask.HOLD and self.state.role not in (Role.STANDBY, Role.FAULT):
                self._next_ask[ask] = now + FENCE_POLL  # not asking while active or fenced
                continue
            del self._next_ask[ask]
            self._asking.add(ask)
            actions.append(AskPeer(ask))
        if self._settle_at is not None and self._settle_at <= now:
            self._settle_at = None
            self._settle()
        if self._reload_at is not None and self._reload_at <= now:
            self._reload_at = None
            if not self._relay_loaded:  # not replaced meanwhile by a demotion
                actions.append(self._load_relay(start=self.state.role is Role.ACTIVE))
        return actions

    # ------------------------------------------------------------------ rules

    def _hold(self, answer: PeerAnswer, now: float) -> list[Action]:
        peer = answer.active
        if peer is not None:
            self._peer_bmi = peer.bmi_connections
        self._silent = 0 if peer is not None or answer.sure else self._silent + 1
        may_preempt = self.preempt and peer is not None and self.state.priority > peer.priority
        held = peer is not None and not may_preempt
        if not held and self.state.held and self._silent and self._silent < RELEASE_MISSES:
            held = True  # silence once may be a slow answer: ask again first
        if held == self.state.held or self.state.role not in (Role.STANDBY, Role.FAULT):
            return []
        log.info(
            "%s: the peer's relay is %s",
            "held" if held else "released",
            "active" if peer is not None else "not active" if answer.sure else "not answering",
        )
        self.state.held = held
        if held:
            self._settle()
        else:
            self._settle_at = now + SETTLE_AFTER_RELEASE
        return [SetFence(held)]

    def _promote(self, answer: PeerAnswer, now: float) -> list[Action]:
        promotion = self._promotion
        if promotion is None or promotion.generation != self._generation:
            self._promotion = None
            return []  # demoted meanwhile
        if answer.active is not None and now < promotion.promoted_at + HANDOVER:
            self._next_ask[Ask.PROMOTE] = now + PROMOTE_POLL
            return []
        self._promotion = None
        if answer.active is None:
            self.state.enter(Role.ACTIVE)
            if not self._relay_loaded:
                return []  # it exited a moment ago: its replacement is started (active)
            self.state.relay_starts += 1
            return [StartRelay(promotion.promoted_at, self._peer_bmi)]
        log.error("VRRP says master but the peer's relay is still active after %.1f s: fenced", HANDOVER)
        self.state.fenced += 1
        self.state.enter(Role.FENCED)
        self._next_ask[Ask.FENCED] = now
        return [SetFence(True)]

    def _fenced(self, answer: PeerAnswer, now: float) -> list[Action]:
        if self.state.role is not Role.FENCED:
            return []
        if answer.active is not None:
            self._next_ask[Ask.FENCED] = now + FENCE_POLL
            return []
        log.warning("the peer is no longer active: fence lifted")
        self.state.enter(Role.STANDBY)
        self.state.held = False
        self._settle_at = now + SETTLE_AFTER_RELEASE  # as a released hold: keepalived leaves FAULT
        return [SetFence(False)]

    def _settle(self) -> None:
        if self.state.role not in (Role.ACTIVE, Role.FENCED):
            faulty = self.state.vrrp is Vrrp.FAULT and not self.state.held
            self.state.enter(Role.FAULT if faulty else Role.STANDBY)

    def _load_relay(self, start: bool) -> LoadRelay:
        self._relay_loaded = True
        if start:
            self.state.relay_starts += 1
        return LoadRelay(start)
