"""Why a connection ends, as codes, and the one root of the concentrator's exceptions.

Metrics count disconnects by `Cause` and logs print `cause.value` first, so both stay
greppable; the prose detail that follows is for people.
"""

from __future__ import annotations

from enum import Enum


class ConcentratorError(Exception):
    """Root of every exception the protocol objects and the relay core raise."""


class Cause(Enum):
    # The peer broke the protocol or a timer ran out (the link decides these).
    T1_EXPIRED = "t1_expired"
    BAD_FRAME = "bad_frame"  # bytes that are not an APDU
    SEQUENCE_ERROR = "sequence_error"  # N(S) out of order, or N(R) confirming frames never sent
    TOO_MANY_UNCONFIRMED = "too_many_unconfirmed"  # more than k I-frames without our confirmation
    UNEXPECTED_FRAME = "unexpected_frame"  # a U- or I-frame the current state does not allow
    # The connection itself.
    PEER_CLOSED = "peer_closed"
    CONNECTION_ERROR = "connection_error"
    # The relay decides these.
    REFUSED = "refused"  # not on the allowlist, or above the connection ceiling
    SUPERSEDED = "superseded"  # IEC 104 Ed. 2: STARTDT on another connection took the active role
    UPLINK_NOT_STARTED = "uplink_not_started"  # sites are disconnected while no BMI connection is started
    MALFORMED_ASDU = "malformed_asdu"
    FOREIGN_CA = "foreign_ca"  # a site's ASDU carries a CA the site is not configured for
    SEND_BUDGET_EXCEEDED = "send_budget_exceeded"  # the peer stopped reading what we send
    RECEIVE_BUDGET_EXCEEDED = "receive_budget_exceeded"  # it kept sending while not reading
    INTERNAL_ERROR = "internal_error"
    SHUTDOWN = "shutdown"


CAUSES = tuple(Cause)
