"""Issue 29 item 2: an allowlisted BMI address reconnecting flat out writes a bounded number
of log lines; the limiter counts the rest, and the metrics count every connection."""

from __future__ import annotations

import re
import socket
import time

import trio

from tests.helpers import free_port, wait_for
from tests.interop.test_relay_floods import HOST, relay_process

RECONNECTS = 10_000


def reconnect(port: int, times: int) -> float:
    """Connect and close `times` times, one after the other; the seconds it took."""
    start = time.monotonic()
    for _ in range(times):
        with socket.create_connection((HOST, port)):
            pass
    return time.monotonic() - start


def counted(lines: list[str], what: str) -> int:
    """Events of one kind the log accounts for: a line is one, plus the N it says were not
    logged before it; a summary stands for the N it counts (itself the latest of them)."""
    total = 0
    for line in lines:
        if f"BMI {HOST} {what}" in line:
            if found := re.search(r"\((\d+) like it in \d+ s, this the latest\)", line):
                total += int(found.group(1))
            elif found := re.search(r"\((\d+) more like it not logged\)", line):
                total += 1 + int(found.group(1))
            else:
                total += 1
    return total


async def test_an_allowlisted_peer_reconnecting_10000_times_writes_a_bounded_number_of_lines():
    async with relay_process([free_port()], max_connections=64) as relay:
        seconds = await trio.to_thread.run_sync(reconnect, relay.uplink_port, RECONNECTS)
        # Each connection closes before the next one opens: the relay refuses none for
        # the ceiling unless it lags 64 closes behind.
        await wait_for(lambda: relay.sample("concentrator_uplink_connections_total") == RECONNECTS, timeout=30,
                       what="every connection counted")  # fmt: skip
        await wait_for(lambda: relay.sample("concentrator_uplink_open_connections") == 0, timeout=30)
        # The summaries are due 10 s after each first line (relay/limited_log.py LOG_INTERVAL).
        await wait_for(lambda: counted(relay.log.read_text().splitlines(), "disconnected") == RECONNECTS, timeout=25,
                       what="the summaries' counts to add up")  # fmt: skip
        lines = relay.log.read_text().splitlines()
    connected = [line for line in lines if f"BMI {HOST} connected" in line]
    disconnected = [line for line in lines if f"BMI {HOST} disconnected" in line]
    print(f"\n{RECONNECTS} reconnects in {seconds:.1f} s: {len(connected)} 'connected' lines, {len(disconnected)} "
          f"'disconnected' lines, {len(lines)} log lines in all")  # fmt: skip
    for line in connected + disconnected:
        print(line)
    bound = 2 * (2 + int(seconds // 10))  # per kind: the first, then one summary per 10 s, and the last
    assert len(connected) + len(disconnected) <= bound
    assert counted(lines, "connected") == RECONNECTS
    assert counted(lines, "disconnected") == RECONNECTS
    assert "Traceback" not in "\n".join(lines)
    assert len(lines) < 40
