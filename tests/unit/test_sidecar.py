"""The sidecar (concentrator/sidecar.py), once for every feature that runs a child
through it: the restart policy with injected time, the records over a byte stream cut
anywhere, and the trio driver with real child processes (started, configured, fed,
restarted after the policy's delay, stopped by closing the pipe, drops counted)."""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from concentrator.config import Endpoint
from concentrator.incidents.config import IncidentsConfig
from concentrator.incidents.tap import IncidentFeeder, IncidentTap
from concentrator.mirror.config import MqttConfig
from concentrator.mirror.process import MirrorProcess
from concentrator.mirror.queue import MirrorQueue
from concentrator.mirror.stats import MirrorStats
from concentrator.relay.stats import RelayStats
from concentrator.shedding.config import SheddingConfig
from concentrator.shedding.tap import ShedFeeder, ShedTap
from concentrator.sidecar import NICE, Backoff, Child, Records, Sidecar, command, decode, encode, message
from monitoring.exporter import RelayExporter
from tests.shedding.test_monitor import SITES

CHILD = "tests.unit.sidecar_child"


# ------------------------------------------------------------------ the restart policy


def delays(policy: Backoff, runs: list[float]) -> list[float]:
    """The delays the policy gives for children that ran `runs` seconds each, on a clock
    that only the children and the delays move."""
    now, out = 1000.0, []
    for ran in runs:
        policy.started(now)
        now += ran
        delay = policy.exited(now)
        out.append(delay)
        now += delay
    return out


def test_a_child_that_keeps_failing_is_retried_less_and_less_often_up_to_the_most() -> None:
    assert delays(Backoff(), [0.1] * 9) == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_child_that_ran_long_enough_is_restarted_soon_and_the_doubling_begins_again() -> None:
    policy = Backoff()
    assert delays(policy, [0.1, 0.1, 0.1, 59.9]) == [1, 2, 4, 8]
    assert delays(policy, [60.0, 0.1, 0.1]) == [1, 2, 4]
    assert policy.restarts == 7


def test_a_factor_of_one_is_a_fixed_delay() -> None:
    assert delays(Backoff(first=1.0, factor=1.0), [0.1, 500.0, 0.1]) == [1, 1, 1]


def test_each_user_runs_its_child_with_its_policy() -> None:
    """The policy of every user, as the relay builds it: the mirror restarts after a fixed
    second (its broker's outages are handled inside the child); the shedding monitor and
    the incident register back off, doubling to a minute, because a child of theirs that
    cannot start (an unwritable record) would fail again at once."""
    shedding = SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), 4.0, 10, SITES)
    # The mirror's and the register's feeders only hand their configuration to the child.
    mqtt = MqttConfig.__new__(MqttConfig)
    incidents = IncidentsConfig.__new__(IncidentsConfig)
    relay_stats = RelayStats(mirror=MirrorStats())
    assert relay_stats.mirror is not None
    mirror = MirrorProcess(mqtt, MirrorQueue(10, relay_stats.mirror, frozenset()), relay_stats)
    policies = {
        "mirror": mirror.sidecar.policy,
        "shedding": ShedFeeder(shedding, ShedTap(frozenset(), 10)).sidecar.policy,
        "incidents": IncidentFeeder(incidents, IncidentTap(10)).sidecar.policy,
        "exporter": RelayExporter.restart_policy(),  # its own thread restarts it (monitoring/exporter.py)
    }
    failing = {name: delays(policy, [0.1] * 8) for name, policy in policies.items()}
    assert failing == {"mirror": [1.0] * 8, "shedding": [1, 2, 4, 8, 16, 32, 60, 60],
                       "incidents": [1, 2, 4, 8, 16, 32, 60, 60],
                       "exporter": [1, 2, 4, 8, 16, 32, 60, 60]}  # fmt: skip


# ------------------------------------------------------------------ records


def test_a_record_keeps_every_field() -> None:
    frame = encode("north-01", b"\x0d\x01\x03\x00", 1765000000.25, seq=2**40, kind=2)
    (record,) = decode(frame)
    assert record == (2**40, 1765000000.25, 2, "north-01", b"\x0d\x01\x03\x00")


def test_a_partial_record_is_refused_by_decode() -> None:
    frame = encode("a", b"xyz", 1.0)
    with pytest.raises(ValueError, match="1 octets after the last whole record"):
        decode(frame + frame[:1])


@given(
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=300), st.integers(0, 2**64 - 1), st.integers(0, 255))),
    st.lists(st.integers(1, 64)),
)
def test_records_come_out_whole_and_in_order_however_the_stream_is_cut(
    entries: list[tuple[str, bytes, int, int]], cuts: list[int]
) -> None:
    config = {"name": "x"}
    stream = message(config) + b"".join(encode(site, body, 1.5, seq, kind) for site, body, seq, kind in entries)
    reader = Records()
    messages: list[bytes] = []
    out = []
    position = 0
    for size in [*cuts, len(stream)]:
        reader.feed(stream[position : position + size])
        position += size
        if not messages:
            payload = reader.next_message()
            if payload is None:
                continue
            messages.append(payload)
        while (record := reader.next_record()) is not None:
            out.append(record)
    assert messages == [message(config)[4:]]
    assert [(r.site, r.body, r.seq, r.kind, r.when) for r in out] == [(s, b, q, k, 1.5) for s, b, q, k in entries]


# ------------------------------------------------------------------ the driver, with real children


async def _lines(child: Child, lines: list[str], until: str) -> None:
    assert child.stdout is not None
    buffer = b""
    async for chunk in child.stdout:
        buffer += chunk
        *done, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in done)
        if until in lines:
            return


async def test_the_child_gets_its_config_and_the_records_at_a_lower_priority() -> None:
    lines: list[str] = []
    configs = 0

    def config() -> dict[str, str]:
        nonlocal configs
        configs += 1
        return {"name": f"run-{configs}"}

    sidecar = Sidecar("echo", command(CHILD), config, stdout=True)

    processes: list[trio.Process] = []

    async def session(child: Child) -> None:
        processes.append(child.process)
        await child.send([encode("north", b"one", 1.0, seq=7), encode("", b"two", 2.0, kind=3)])
        await child.send([])  # nothing to write: nothing written
        await _lines(child, lines, "0 3  two")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sidecar.run, session)
            while configs < 2:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    expected_nice = os.nice(0) + NICE
    assert lines[:3] == [f"config run-1 nice {min(expected_nice, 19)}", "7 0 north one", "0 3  two"]
    # The session ended: the child was stopped by closing its pipe (it saw the end of its
    # input and exited by itself, status 0, not killed), counted as a restart, and started
    # again with a new configuration.
    assert processes[0].returncode == 0
    assert sidecar.restarts >= 1 and sidecar.records >= 2 and sidecar.dropped == 0


async def test_a_child_that_exits_is_started_again_after_the_policy_delay() -> None:
    started: list[float] = []

    def config() -> dict[str, int]:
        started.append(trio.current_time())
        return {"exit": 3}

    sidecar = Sidecar("failing", command(CHILD), config, policy=Backoff(first=0.2, most=0.8, healthy_after=30))

    async def session(child: Child) -> None:
        await trio.sleep_forever()  # only the child's exit ends it

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sidecar.run, session)
            while len(started) < 5:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    # Each gap is the policy's delay plus the child's own start (a Python interpreter).
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert delay <= gap < delay + 3.0, (gaps, delay)
    assert sidecar.restarts == 4 or sidecar.restarts == 5


async def test_records_written_into_a_broken_pipe_are_counted_as_dropped() -> None:
    # A child that closed its stdin without exiting: the pipe breaks under the writer.
    sidecar = Sidecar("deaf", ["sh", "-c", "exec 0<&-; sleep 60"], lambda: None, policy=Backoff(first=0.05))

    async def session(child: Child) -> None:
        await trio.sleep(0.3)  # the child has closed its end by now
        while True:  # 100 kB: more than a pipe holds, so never written whole
            await child.send([encode("a", b"x" * 1000, 0.0)] * 100)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sidecar.run, session)
            while not sidecar.dropped:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert (sidecar.records, sidecar.dropped) == (0, 100)


async def test_a_child_that_ignores_the_end_of_its_input_is_killed_after_the_stop_timeout() -> None:
    started = time.monotonic()
    # "sleep" reads nothing: it never sees its pipe close.
    sidecar = Sidecar("deaf", ["sleep", "60"], lambda: None, stop_timeout=0.5)
    processes: list[trio.Process] = []

    async def session(child: Child) -> None:
        processes.append(child.process)
        await trio.sleep(0.2)  # then the session ends: stop the child

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sidecar.run, session)
            while sidecar.restarts < 1:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert processes[0].returncode == -9  # SIGKILL, after the timeout
    assert 0.7 <= time.monotonic() - started < 10


def test_the_restart_delays_follow_the_policy_on_a_mock_clock() -> None:
    """The driver sleeps the policy's delays and nothing else: on a MockClock that stands
    still while a child lives (the driver then waits on the process, with no deadline) and
    jumps when only the delay is left, the starts are exactly the delays apart."""
    starts: list[float] = []
    ninth = trio.Event()

    def config() -> dict[str, int]:
        starts.append(trio.current_time())
        if len(starts) == 9:
            ninth.set()
        return {"exit": 1}

    async def main() -> None:
        sidecar = Sidecar("failing", command(CHILD), config, policy=Backoff(first=1, most=60, healthy_after=1e9))

        async def session(child: Child) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sidecar.run, session)
            await ninth.wait()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    gaps = [round(b - a, 6) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60]
