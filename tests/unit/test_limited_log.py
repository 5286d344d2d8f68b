"""Repeated warnings: the first is logged, then one summary per LOG_INTERVAL with the count
of those left out (issue 11; the unknown-CA flood over a real relay: tests/interop/
test_relay_floods.py)."""

from __future__ import annotations

import pytest

from concentrator.relay.limited_log import LOG_INTERVAL, LimitedLog


@pytest.mark.parametrize("interval_passes", [False, True])
def test_the_limited_log_says_the_first_then_a_summary_with_the_count(
    interval_passes: bool, caplog: pytest.LogCaptureFixture
) -> None:
    limited = LimitedLog()
    with caplog.at_level("WARNING"):
        for n in range(1000):
            limited.warning("key", n * 0.001, "unknown CA %d", 7)
        limited.warning("key", 1.0 + (LOG_INTERVAL if interval_passes else 0.0), "unknown CA %d", 7)
    messages = [r.getMessage() for r in caplog.records]
    if interval_passes:
        assert messages == ["unknown CA 7", "unknown CA 7 (999 more like it not logged)"]
    else:
        assert messages == ["unknown CA 7"]


def test_the_summary_comes_on_the_timer_with_the_count_even_if_the_condition_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 29 item 2: a reconnect flood that stops still gets its count logged, at the
    deadline the limiter reports; before it, nothing more is logged."""
    limited = LimitedLog()
    with caplog.at_level("INFO"):
        for n in range(10_000):
            limited.info("connected 10.0.0.1", n * 0.0001, "BMI %s connected", "10.0.0.1")
        assert limited.deadline() == LOG_INTERVAL
        limited.flush(LOG_INTERVAL - 0.001)
        assert [r.getMessage() for r in caplog.records] == ["BMI 10.0.0.1 connected"]
        limited.flush(LOG_INTERVAL)
    assert [r.getMessage() for r in caplog.records] == [
        "BMI 10.0.0.1 connected",
        "BMI 10.0.0.1 connected (9999 like it in 10 s, this the latest)",
    ]
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]
    assert limited.deadline() is None


def test_keys_with_nothing_pending_are_forgotten_beyond_the_ceiling() -> None:
    limited = LimitedLog()
    for n in range(3 * LimitedLog.MAX_KEYS):
        limited.info(f"connected 10.0.{n // 256}.{n % 256}", n * LOG_INTERVAL / LimitedLog.MAX_KEYS, "x")
    assert len(limited._last) <= LimitedLog.MAX_KEYS + 2


def test_a_flapping_site_and_a_reconnecting_bmi_write_the_first_lines_then_summaries_on_the_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The core's connect and disconnect lines go through the limiter; the summaries come
    when the driver runs the timer the core announced, with the counts."""
    from concentrator.iec104.errors import Cause
    from concentrator.iec104.link import LinkParams
    from concentrator.relay.core import RelayCore

    from .core_lab import site_config

    core = RelayCore([site_config(0, LinkParams())], LinkParams(), 0.0)
    now = 0.0
    with caplog.at_level("INFO"):
        for _ in range(1000):
            now += 0.001
            conn = core.site_connected(0, "127.0.0.1:1", now)
            core.connection_lost(conn, Cause.PEER_CLOSED, "closed by peer", now)
            bmi = core.uplink_accepted("10.0.0.1", now)
            assert bmi is not None
            core.connection_lost(bmi, Cause.PEER_CLOSED, "closed by peer", now)
        assert len(caplog.records) == 4  # the first of each kind
        deadline = core.get_timer()
        assert deadline is not None and deadline <= LOG_INTERVAL + 0.001
        core.handle_timer(deadline)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 8
    for kind in ("site site-01 connected", "site site-01 disconnected", "BMI 10.0.0.1 connected",
                 "BMI 10.0.0.1 disconnected"):  # fmt: skip
        first, summary = [line for line in lines if line.startswith(kind)]
        assert "like it" not in first and summary.endswith("(999 like it in 10 s, this the latest)")
