"""Whether the uplink's windows can make progress with the sites behind it (pure; the
relay core's end-to-end acknowledgement is what makes this rule, see core.py).
`check-config` and the relay refuse a configuration that breaks it; check-config warns
when a few idle sites would break it. And the buffer
budget of a connection, which its k window sets."""

from __future__ import annotations

from collections.abc import Sequence

from ..iec104.apci import MAX_LENGTH
from ..iec104.link import LinkParams


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


def idle_tolerant_w(sites: Sequence[LinkParams]) -> tuple[int, int]:
    """(the largest w that the sites still fill with a few of them idle, how many idle).

    "A few" is a quarter of the sites (at least one, when there are two or more), and
    the idle ones are those with the largest windows: the streaming sites' k windows are
    then all that can be in flight, and a w above their sum is never reached, so every
    confirmation waits for the BMI's t2. bench/WIDE_WINDOW.md measured it with 12 sites
    at k 12: at w 144 with 3 sites idle 2 % of the offered ASDUs reached the BMI, at
    w 108 and below all of them."""
    idle = max(1, len(sites) // 4) if len(sites) > 1 else 0
    windows = sorted(site.k for site in sites)
    return sum(windows[: len(windows) - idle]), idle


def window_warnings(uplink: LinkParams, sites: Sequence[LinkParams]) -> list[str]:
    """What check-config warns about (accepted, but slow when some sites are quiet)."""
    if not sites or window_problems(uplink, sites):
        return []
    tolerant, idle = idle_tolerant_w(sites)
    if idle == 0 or uplink.w <= tolerant:
        return []
    return [
        f"uplink.w {uplink.w} is above {tolerant}, what the sites can have in flight with {idle} of the "
        f"{len(sites)} sites idle: then the BMI reaches w only after its t2 ({uplink.t2} s) and each "
        f"confirmation waits for it (measured with 12 sites at k 12: 2 % of the offered ASDUs delivered at "
        f"w 144 with 3 sites idle, all of them at w 108 and 72, bench/WIDE_WINDOW.md); keep w at most {tolerant}"
    ]


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
