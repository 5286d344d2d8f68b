"""Whether the uplink's windows can make progress with the sites behind it (pure; the
relay core's end-to-end acknowledgement is what makes this rule, see relay_core.py).
`check-config` and the relay refuse a configuration that breaks it."""

from __future__ import annotations

from collections.abc import Sequence

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
