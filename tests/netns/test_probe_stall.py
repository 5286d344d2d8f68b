"""A probe's answer that arrived while netd's event loop was busy is an answer, not a
miss. Found by the chaos soak (bench/soak.py, seed 26, 60 minutes on a shared 2-core
machine): netd (202 probes per 0.5 s) declared dozens of healthy site paths down at
once, several times, each time "detected in" the same 1.27-1.47 s, and moved their
routes and trip copies; the replies had come, and were read after the adaptive timeout
(30 ms on a LAN) had passed. Root: a raw ICMP socket on loopback."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import Any

import pytest
import trio

from netconfig.probe import run_probe
from tests.conftest import require_root

pytestmark = pytest.mark.netns


class StallAfterSend:
    """A trio socket whose `stall_on`-th send is followed by `stall` s during which the
    event loop runs nothing (the process waits for a CPU, or another task hogs it)."""

    def __init__(self, sock: Any, stall_on: int, stall: float) -> None:
        self._sock, self.stall_on, self.stall, self.sends = sock, stall_on, stall, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    async def sendto(self, *args: Any) -> int:
        sent: int = await self._sock.sendto(*args)
        self.sends += 1
        if self.sends == self.stall_on:
            time.sleep(self.stall)  # noqa: ASYNC251  # blocking on purpose: the loop stalls
        return sent


async def test_an_answer_read_late_because_the_loop_stalled_is_not_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    wrapped: list[StallAfterSend] = []
    real = trio.socket.from_stdlib_socket

    def stalling(sock: Any) -> Any:
        wrapped.append(StallAfterSend(real(sock), stall_on=6, stall=0.2))
        return wrapped[-1]

    monkeypatch.setattr(trio.socket, "from_stdlib_socket", stalling)
    reports: list[bool] = []

    async def report(answered: bool, _at: float) -> None:
        reports.append(answered)

    # Five quick answers teach the probe a LAN round trip (timeout: its 30 ms floor);
    # then the loop stalls 200 ms right after the sixth probe left.
    with trio.move_on_after(0.1 * 8 + 0.3):
        await run_probe("lo", IPv4Address("127.0.0.1"), 0.1, report)
    assert wrapped and wrapped[0].sends >= 7
    assert len(reports) >= 7 and all(reports), reports
