"""The IEC 104 link's data-transfer states, as a declared table (h11's `_state.py` shape).

States carry IEC 60870-5-104 Ed. 2 names. Both roles refuse to stop while I-frames they
sent are unconfirmed ("pending unconfirmed stopped"):

- controlled station: a STOPDT act received while its I-frames are unconfirmed is
  confirmed only once the peer confirmed them (lib60870's server does the same);
- controlling station: `stop()` while its I-frames are unconfirmed sends the STOPDT act
  only once they are confirmed.

`TRANSITIONS[role][(state, input)]` gives the next state and the U-frame to send then;
a pair that is not in the table is a protocol error by the peer (a received U-frame) or a
local misuse (`start()` / `stop()`). `ALL_CONFIRMED` is raised by the link itself when
the last of its sent I-frames is confirmed in a pending-unconfirmed state.
"""

from __future__ import annotations

from enum import Enum

from .apci import UFunction


class Role(Enum):
    CONTROLLED = "controlled"  # the station side: our uplink toward the BMI
    CONTROLLING = "controlling"  # the master side: our connections to the sites


class State(Enum):
    STOPPED = "stopped"
    PENDING_STARTED = "pending_started"  # STARTDT act sent, con awaited (controlling)
    STARTED = "started"
    PENDING_UNCONFIRMED_STOPPED = "pending_unconfirmed_stopped"  # stop asked, own I-frames unconfirmed
    PENDING_STOPPED = "pending_stopped"  # STOPDT act sent, con awaited (controlling)
    CLOSED = "closed"  # failed: the connection must be closed


class Input(Enum):
    START = "start"  # local: controlling station asks to start
    STOP = "stop"  # local: controlling station asks to stop
    STARTDT_ACT = "STARTDT_ACT"
    STARTDT_CON = "STARTDT_CON"
    STOPDT_ACT = "STOPDT_ACT"
    STOPDT_CON = "STOPDT_CON"
    ALL_CONFIRMED = "all_confirmed"  # the last unconfirmed I-frame we sent got confirmed


U_INPUT = {
    UFunction.STARTDT_ACT: Input.STARTDT_ACT,
    UFunction.STARTDT_CON: Input.STARTDT_CON,
    UFunction.STOPDT_ACT: Input.STOPDT_ACT,
    UFunction.STOPDT_CON: Input.STOPDT_CON,
}

S, I = State, Input  # noqa: E741 - the table reads better short
TRANSITIONS: dict[Role, dict[tuple[State, Input], tuple[State, UFunction | None]]] = {
    Role.CONTROLLED: {
        (S.STOPPED, I.STARTDT_ACT): (S.STARTED, UFunction.STARTDT_CON),
        (S.STARTED, I.STARTDT_ACT): (S.STARTED, UFunction.STARTDT_CON),  # repeated: confirm again
        (S.STOPPED, I.STOPDT_ACT): (S.STOPPED, UFunction.STOPDT_CON),
        (S.STARTED, I.STOPDT_ACT): (S.PENDING_UNCONFIRMED_STOPPED, None),
        (S.PENDING_UNCONFIRMED_STOPPED, I.STOPDT_ACT): (S.PENDING_UNCONFIRMED_STOPPED, None),
        (S.PENDING_UNCONFIRMED_STOPPED, I.ALL_CONFIRMED): (S.STOPPED, UFunction.STOPDT_CON),
    },
    Role.CONTROLLING: {
        (S.STOPPED, I.START): (S.PENDING_STARTED, UFunction.STARTDT_ACT),
        (S.PENDING_STARTED, I.STARTDT_CON): (S.STARTED, None),
        (S.STARTED, I.STOP): (S.PENDING_UNCONFIRMED_STOPPED, None),
        (S.PENDING_UNCONFIRMED_STOPPED, I.ALL_CONFIRMED): (S.PENDING_STOPPED, UFunction.STOPDT_ACT),
        (S.PENDING_STOPPED, I.STOPDT_CON): (S.STOPPED, None),
    },
}
del S, I

# States in which this side may send I-frames, and in which it accepts them from the
# peer (the peer may still send until it has seen our STOPDT, or until its own confirmation).
SENDS_I = frozenset({State.STARTED})
RECEIVES_I = {
    Role.CONTROLLED: frozenset({State.STARTED, State.PENDING_UNCONFIRMED_STOPPED}),
    Role.CONTROLLING: frozenset({State.STARTED, State.PENDING_UNCONFIRMED_STOPPED, State.PENDING_STOPPED}),
}
