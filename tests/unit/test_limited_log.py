"""Repeated warnings: the first is logged, then one summary per LOG_INTERVAL with the count
of those left out (issue 11; the unknown-CA flood over a real relay: tests/interop/
test_relay_floods.py)."""

from __future__ import annotations

import pytest

from concentrator.relay_core import LOG_INTERVAL, LimitedLog


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
