"""The HA policy's decisions (concentrator/ha/policy.py) without processes or sockets:
settle, hold, promote, fence, release, a relay crash, with the time given."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from concentrator.ha.policy import (
    FENCE_POLL,
    HANDOVER,
    PROMOTE_POLL,
    RELAY_RESTART,
    SETTLE_AFTER_RELEASE,
    Action,
    Ask,
    AskPeer,
    HaPolicy,
    LoadRelay,
    PeerAnswer,
    SetFence,
    StartRelay,
)
from concentrator.ha.state import DOWN, HaState, PeerStatus, Role, Vrrp

ACTIVE_PEER = PeerStatus(Role.ACTIVE, priority=100, bmi_connections=("10.0.1.1:40000",))
STANDBY_PEER = PeerStatus(Role.STANDBY, priority=100)
PEER_ACTIVE = PeerAnswer(ACTIVE_PEER, sure=True)
PEER_STANDBY = PeerAnswer(None, sure=True)
SILENCE = PeerAnswer(None, sure=False)


class Pair:
    """One policy with its clock, and the fence as the track file would hold it."""

    def __init__(self, priority: int = 150, preempt: bool = False) -> None:
        self.state = HaState("conc-a", priority)
        self.policy = HaPolicy(self.state, preempt=preempt)
        self.now = 0.0
        self.fence = False
        self.asking: set[Ask] = set()
        self.actions: list[Action] = []
        self.do(self.policy.start(self.now))

    def do(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, SetFence):
                self.fence = action.on
            if isinstance(action, AskPeer):
                assert action.ask not in self.asking, "one ask of a kind under way at a time"
                self.asking.add(action.ask)
        self.actions += actions
        return actions

    def advance(self, seconds: float) -> list[Action]:
        """Time passes; every timer due meanwhile fires in order."""
        end, out = self.now + seconds, []
        while (deadline := self.policy.get_timer()) <= end:
            self.now = max(self.now, deadline)
            out += self.do(self.policy.handle_timer(self.now))
        self.now = end
        return out

    def answer(self, ask: Ask, answer: PeerAnswer) -> list[Action]:
        assert ask in self.asking, f"{ask} was not asked"
        self.asking.discard(ask)
        return self.do(self.policy.peer_answered(ask, answer, self.now))

    def vrrp(self, vrrp: Vrrp) -> list[Action]:
        return self.do(self.policy.vrrp_changed(vrrp, self.now))

    def hold_round(self, answer: PeerAnswer) -> list[Action]:
        """The next hold poll, answered."""
        if Ask.HOLD not in self.asking:
            self.advance(FENCE_POLL)
        return self.answer(Ask.HOLD, answer)


def test_start_loads_a_relay_unstarted_and_asks_the_peer_at_once() -> None:
    pair = Pair()
    assert pair.actions == [LoadRelay(start=False), AskPeer(Ask.HOLD)]
    assert pair.state.role is Role.STANDBY and not pair.fence


# --------------------------------------------------------------------------- hold and release


def test_an_active_peer_holds_this_appliance_out_of_vrrp() -> None:
    pair = Pair()
    assert pair.hold_round(PEER_ACTIVE) == [SetFence(True)]
    assert pair.state.held and pair.fence
    assert pair.hold_round(PEER_ACTIVE) == []  # nothing new while it stays active
    # keepalived goes FAULT because of the fence: that is the normal standby, not a fault
    pair.vrrp(Vrrp.FAULT)
    assert pair.state.role is Role.STANDBY


def test_a_fault_of_its_own_is_a_fault() -> None:
    pair = Pair()
    pair.hold_round(PEER_STANDBY)
    pair.vrrp(Vrrp.FAULT)  # not held: an interface down
    assert pair.state.role is Role.FAULT
    pair.vrrp(Vrrp.BACKUP)
    assert pair.state.role is Role.STANDBY


def test_release_when_the_peer_says_not_active_or_refuses() -> None:
    for answer in (PEER_STANDBY, PeerAnswer(None, sure=True)):  # DOWN reduces to not active, sure
        pair = Pair()
        pair.hold_round(PEER_ACTIVE)
        pair.vrrp(Vrrp.FAULT)
        assert pair.hold_round(answer) == [SetFence(False)]
        assert not pair.state.held and not pair.fence
        # keepalived leaves FAULT in a moment; until it does, the standby is not a fault
        assert pair.state.role is Role.STANDBY
        pair.advance(SETTLE_AFTER_RELEASE)
        assert pair.state.role is Role.FAULT  # still FAULT after that: a fault of its own


def test_one_silent_round_does_not_release_a_held_standby_two_do() -> None:
    pair = Pair()
    pair.hold_round(PEER_ACTIVE)
    assert pair.hold_round(SILENCE) == []
    assert pair.state.held
    assert pair.hold_round(SILENCE) == [SetFence(False)]
    assert not pair.state.held


def test_a_sure_answer_between_silences_starts_the_count_again() -> None:
    pair = Pair()
    pair.hold_round(PEER_ACTIVE)
    pair.hold_round(SILENCE)
    pair.hold_round(PEER_ACTIVE)
    assert pair.hold_round(SILENCE) == []
    assert pair.state.held


def test_preempt_with_a_higher_priority_is_not_held() -> None:
    assert Pair(priority=150, preempt=True).hold_round(PEER_ACTIVE) == []
    assert Pair(priority=50, preempt=True).hold_round(PEER_ACTIVE) == [SetFence(True)]
    assert Pair(priority=150, preempt=False).hold_round(PEER_ACTIVE) == [SetFence(True)]


def test_the_hold_is_not_asked_while_active() -> None:
    pair = Pair()
    pair.hold_round(PEER_STANDBY)
    pair.vrrp(Vrrp.MASTER)
    pair.answer(Ask.PROMOTE, PEER_STANDBY)
    assert pair.state.role is Role.ACTIVE
    assert not any(isinstance(a, AskPeer) for a in pair.advance(10 * FENCE_POLL))


# --------------------------------------------------------------------------- promote and fence


def test_master_with_the_peer_not_active_starts_the_relay() -> None:
    pair = Pair()
    pair.hold_round(PEER_ACTIVE)  # learns the BMI's connections to the peer
    pair.hold_round(PEER_STANDBY)
    pair.advance(1.0 - pair.now)  # the next hold round is asked meanwhile, not answered yet
    assert pair.vrrp(Vrrp.MASTER) == [AskPeer(Ask.PROMOTE)]
    assert pair.state.role is Role.STANDBY  # not active until the peer said so
    assert pair.answer(Ask.PROMOTE, PEER_STANDBY) == [StartRelay(1.0, ("10.0.1.1:40000",))]
    assert pair.state.role is Role.ACTIVE and pair.state.relay_starts == 1


def test_master_waits_for_a_preempted_peer_to_stop_its_relay() -> None:
    pair = Pair(preempt=True)
    pair.vrrp(Vrrp.MASTER)
    assert pair.answer(Ask.PROMOTE, PEER_ACTIVE) == []
    assert pair.advance(PROMOTE_POLL) == [AskPeer(Ask.PROMOTE)]
    assert pair.answer(Ask.PROMOTE, PEER_ACTIVE) == []
    pair.advance(PROMOTE_POLL)
    assert [type(a) for a in pair.answer(Ask.PROMOTE, PEER_STANDBY)] == [StartRelay]


def test_master_with_the_peer_still_active_after_the_handover_is_fenced() -> None:
    pair = Pair()
    pair.vrrp(Vrrp.MASTER)
    while pair.now < HANDOVER:
        assert pair.answer(Ask.PROMOTE, PEER_ACTIVE) == []
        pair.advance(PROMOTE_POLL)
    assert pair.answer(Ask.PROMOTE, PEER_ACTIVE) == [SetFence(True)]
    assert pair.state.role is Role.FENCED and pair.state.fenced == 1 and pair.fence
    assert not any(isinstance(a, StartRelay) for a in pair.actions)
    # fenced until the peer's relay stops; keepalived's FAULT meanwhile changes nothing
    pair.vrrp(Vrrp.FAULT)
    assert pair.state.role is Role.FENCED
    pair.advance(0)
    assert pair.answer(Ask.FENCED, PEER_ACTIVE) == []
    pair.advance(FENCE_POLL)
    assert pair.answer(Ask.FENCED, PEER_STANDBY) == [SetFence(False)]
    assert pair.state.role is Role.STANDBY and not pair.fence
    pair.vrrp(Vrrp.BACKUP)  # keepalived out of FAULT
    pair.advance(SETTLE_AFTER_RELEASE)
    assert pair.state.role is Role.STANDBY and pair.state.transitions == {"fenced": 1, "standby": 1}


def test_a_promotion_overtaken_by_a_demotion_starts_nothing() -> None:
    pair = Pair()
    pair.vrrp(Vrrp.MASTER)
    pair.vrrp(Vrrp.BACKUP)
    assert pair.answer(Ask.PROMOTE, PEER_STANDBY) == []
    assert pair.state.role is Role.STANDBY


def test_demotion_stops_the_relay_and_loads_a_new_one() -> None:
    pair = Pair()
    pair.vrrp(Vrrp.MASTER)
    pair.answer(Ask.PROMOTE, PEER_STANDBY)
    assert pair.vrrp(Vrrp.FAULT) == [LoadRelay(start=False)]
    assert pair.state.role is Role.FAULT  # its own fault (not held)


# --------------------------------------------------------------------------- the two open cases of docs/ha.md


def test_status_port_and_vrrp_both_blocked_with_both_up_gives_two_actives_until_vrrp_returns() -> None:
    """The residual risk docs/ha.md states: with the status port silent on both sides and
    VRRP lost on both, nothing tells this appliance the peer is active. The hold lifts
    after two silent rounds, VRRP makes it master, and the relay starts (the alert
    ConcentratorHaTwoActive is what remains). When VRRP returns and keepalived demotes
    one of the two, its relay is stopped at once."""
    pair = Pair()
    pair.hold_round(PEER_ACTIVE)
    pair.vrrp(Vrrp.FAULT)
    pair.hold_round(SILENCE)
    assert pair.state.held  # one silent round: still held
    pair.hold_round(SILENCE)
    assert not pair.state.held and not pair.fence
    pair.vrrp(Vrrp.MASTER)
    assert [type(a) for a in pair.answer(Ask.PROMOTE, SILENCE)] == [StartRelay]
    assert pair.state.role is Role.ACTIVE
    assert pair.vrrp(Vrrp.BACKUP) == [LoadRelay(start=False)]
    assert pair.state.role is Role.STANDBY


def test_relay_crash_while_active_is_replaced_and_started_after_the_restart_delay() -> None:
    pair = Pair()
    pair.vrrp(Vrrp.MASTER)
    pair.answer(Ask.PROMOTE, PEER_STANDBY)
    assert pair.do(pair.policy.relay_exited(pair.now)) == []
    assert pair.state.relay_exits == 1 and pair.state.role is Role.ACTIVE
    assert pair.advance(RELAY_RESTART * 0.9) == []
    assert pair.advance(RELAY_RESTART * 0.1) == [LoadRelay(start=True)]
    assert pair.state.relay_starts == 2


def test_relay_crash_while_standby_is_replaced_unstarted() -> None:
    pair = Pair()
    pair.hold_round(PEER_ACTIVE)
    pair.do(pair.policy.relay_exited(pair.now))
    loads = [a for a in pair.advance(RELAY_RESTART) if isinstance(a, LoadRelay)]
    assert loads == [LoadRelay(start=False)]


def test_promotion_right_after_a_crash_starts_the_replacement_not_a_dead_relay() -> None:
    pair = Pair()
    pair.do(pair.policy.relay_exited(pair.now))
    pair.vrrp(Vrrp.MASTER)
    assert pair.answer(Ask.PROMOTE, PEER_STANDBY) == []  # no relay to start now
    assert pair.state.role is Role.ACTIVE
    assert [a for a in pair.advance(RELAY_RESTART) if isinstance(a, LoadRelay)] == [LoadRelay(start=True)]


def test_a_demotion_during_the_restart_delay_loads_one_relay_not_two() -> None:
    pair = Pair()
    pair.vrrp(Vrrp.MASTER)
    pair.answer(Ask.PROMOTE, PEER_STANDBY)
    pair.do(pair.policy.relay_exited(pair.now))
    assert pair.vrrp(Vrrp.BACKUP) == [LoadRelay(start=False)]
    assert not [a for a in pair.advance(RELAY_RESTART) if isinstance(a, LoadRelay)]


def test_peer_status_lines_are_read_strictly() -> None:
    assert PeerStatus.parse({"role": "active", "priority": 100, "bmi_connections": ["a:1"]}) == PeerStatus(
        Role.ACTIVE, 100, ("a:1",)
    )
    assert PeerStatus.parse({"role": "something-new"}) == PeerStatus(None)
    assert PeerStatus.parse({"role": 3}) is None
    assert PeerAnswer.from_sides([None, DOWN]) == PeerAnswer(None, sure=True)
    assert PeerAnswer.from_sides([None, None]) == SILENCE
    assert PeerAnswer.from_sides([STANDBY_PEER, ACTIVE_PEER]) == PEER_ACTIVE


# --------------------------------------------------------------------------- random sequences


class PolicyMachine(RuleBasedStateMachine):
    """Any order of keepalived states, peer answers, crashes and time: the fence is
    on exactly while held or fenced, a relay is started only on a promotion whose last
    answer said the peer was not active (or on a crash replacement while active), and
    never while the peer's last answer to that promotion said it was active."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(preempt=False)

    @rule(vrrp=st.sampled_from(list(Vrrp)))
    def keepalived(self, vrrp: Vrrp) -> None:
        self.pair.vrrp(vrrp)

    @precondition(lambda self: self.pair.asking)
    @rule(data=st.data(), answer=st.sampled_from([PEER_ACTIVE, PEER_STANDBY, SILENCE]))
    def peer_answers(self, data: st.DataObject, answer: PeerAnswer) -> None:
        ask = data.draw(st.sampled_from(sorted(self.pair.asking, key=lambda a: a.value)))
        actions = self.pair.answer(ask, answer)
        if answer.active is not None:
            assert not any(isinstance(a, StartRelay) for a in actions), "started while the peer said active"

    @rule()
    def relay_crashes(self) -> None:
        self.pair.do(self.pair.policy.relay_exited(self.pair.now))

    @rule(seconds=st.sampled_from([0.01, PROMOTE_POLL, FENCE_POLL, 0.5, 2.0]))
    def time_passes(self, seconds: float) -> None:
        for action in self.pair.advance(seconds):
            if isinstance(action, LoadRelay) and action.start:
                assert self.pair.state.role is Role.ACTIVE

    @invariant()
    def fence_follows_hold_and_fenced(self) -> None:
        state = self.pair.state
        assert self.pair.fence == (state.held or state.role is Role.FENCED)

    @invariant()
    def starts_only_when_active(self) -> None:
        last_start = next((a for a in reversed(self.pair.actions) if isinstance(a, StartRelay)), None)
        if last_start is not None and self.pair.actions[-1] is last_start:
            assert self.pair.state.role is Role.ACTIVE and self.pair.state.vrrp is Vrrp.MASTER


PolicyMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
test_policy_random_sequences = PolicyMachine.TestCase
