"""Whether the uplink's windows can make progress with the sites behind it (pure; the
relay core's end-to-end acknowledgement is what makes this rule, see relay_core.py).
`check-config` and the relay refuse a configuration that breaks it. And the buffer
budget of a connection, which its k window sets."""

from __future__ import annotations

from collections.abc import Sequence

from .iec104.apci import MAX_LENGTH
from .iec104.link import LinkParams


def window_problems(uplink: LinkParams, sites: Sequence[LinkParams]) -> list[tuple[str, str, object]]:
    """(key, expected, got) for uplink windows that cannot make progress.

    A site's frame stays unconfirmed at the site until the BMI confirmed the copy, so the
    sites together never have more than the sum of their k windows in flight toward the
    BMI. The BMI confirms after w frames (or after its t2): an uplink w above that sum
    means the BMI waits its t2 before every confirmation, and the flow crawls (24 ASDU/s
    was measured with w 400 and 12 sites at k 12).
    """
    if not sites:
        return []
    in_flight = sum(site.k for site in sites)
    if uplink.w > in_flight:
        return [
            (
                "uplink.w",
                f"at most {in_flight}, the sum of the sites' k windows ({len(sites)} sites): the BMI "
                f"confirms after w frames and the sites cannot have more in flight, so every "
                f"confirmation would wait for the BMI's t2 ({uplink.t2} s)",
                uplink.w,
            )
        ]
    return []


# Each connection's budget, in both directions, is its k window plus a margin of frames
# of the largest size (README, "A hostile or broken peer"): a well-behaved peer never has
# more than k I-frames and a few S/U-frames under way, so it never meets it.
#   send: bytes written to it that its socket did not take (the peer is not reading).
#     Beyond the budget (TESTFR cons, S-frames, commands it does not read) it is closed.
#   receive: bytes read from it at once (plus a partial frame held between reads). While
#     any of our bytes wait for the peer, the relay stops reading from it, so its own
#     requests cannot pile up answers; if it sends a receive budget more meanwhile
#     (waiting in our socket), it sends without reading and is closed
#     (receive_budget_exceeded). relay.Connection enforces both.
BUDGET_MARGIN_FRAMES = 32


def budget(k: int) -> int:
    """The send and the receive budget of a connection whose window is `k`, in bytes."""
    return (k + BUDGET_MARGIN_FRAMES) * (MAX_LENGTH + 2)
