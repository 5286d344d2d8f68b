"""Issue 25, item 2: a session resumed after the broker was frozen with QoS 2 messages in
flight. The broker's Receive Maximum (Mosquitto's default 20) applies to the messages
being completed from the resumed session too: the mirror must send no more than that
before they complete, so that no PUBREC says 0x97 (quota exceeded), and every QoS 2
event reaches the viewer exactly once. Checked in the broker's own debug log."""

from __future__ import annotations

import re
from collections.abc import Callable

import trio

from tests.helpers import wait_for

from .broker import PREFIX, Broker
from .clients import Subscriber
from .test_delivery import mirror_process, single_point_event

CLIENT = "concentrator-test"
RECEIVE_MAXIMUM = 20  # Mosquitto's max_inflight_messages default
# Mosquitto 2.0 debug lines for the client's QoS 1/2 publishes, in the order it handled them.
RECEIVED = re.compile(rf"Received PUBLISH from {CLIENT} \(d(\d), q([12]), r\d, m(\d+),")
PUBREC = re.compile(rf"Sending PUBREC to {CLIENT} \(m(\d+), rc(\d+)\)")
DONE = re.compile(rf"Sending (?:PUBCOMP|PUBACK) to {CLIENT} \(m(\d+)")


def broker_in_flight(log: str) -> tuple[int, list[int]]:
    """(the most QoS 1/2 messages of the client the broker held at once, from its PUBLISH
    to its PUBCOMP or PUBACK, the reason codes of its PUBRECs that were failures)."""
    held: set[int] = set()
    most = 0
    failures = []
    for line in log.splitlines():
        if m := RECEIVED.search(line):
            held.add(int(m[3]))
            most = max(most, len(held))
        elif m := PUBREC.search(line):
            if int(m[2]) >= 0x80:
                failures.append(int(m[2]))
                held.discard(int(m[1]))
        elif m := DONE.search(line):
            held.discard(int(m[1]))
    return most, failures


def test_the_log_check_can_say_not_ok():
    log = "\n".join(
        [f"1: Received PUBLISH from {CLIENT} (d0, q2, r0, m{n}, 'x', ... (9 bytes))" for n in range(1, 23)]
        + [f"2: Sending PUBREC to {CLIENT} (m22, rc151)", f"3: Sending PUBCOMP to {CLIENT} (m1)"]
    )
    assert broker_in_flight(log) == (22, [151])


async def test_a_resumed_session_keeps_to_receive_maximum_and_delivers_everything_once(
    make_broker: Callable[..., Broker],
):
    broker = make_broker("log_type debug")
    with Subscriber(broker, "viewer", f"{PREFIX}/#", client_id="viewer-resume", persistent=True) as viewer:
        # keepalive 5 s: the mirror gives up on the frozen broker and resumes its session.
        async with mirror_process(broker, keepalive=5) as (queue, stats):
            await wait_for(lambda: stats.connected, 20, "the mirror connected")
            for ioa in range(1, 11):
                queue.push(single_point_event(ioa), "site-01", trio.current_time())
            await wait_for(lambda: stats.published_qos2 == 10, 10, "10 events before the freeze")
            broker.freeze()
            try:
                # 20 go out to the frozen broker (its Receive Maximum), the rest wait.
                for ioa in range(11, 111):
                    queue.push(single_point_event(ioa), "site-01", trio.current_time())
                await wait_for(lambda: stats.in_flight == 100, 10, "100 events in flight")
                await wait_for(lambda: not stats.connected, 30, "the mirror giving up on the frozen broker")
                await trio.sleep(3)
            finally:
                broker.thaw()
            await wait_for(lambda: stats.published_qos2 == 110, 60, "every event completed after the thaw")
            await wait_for(lambda: len(viewer.data()) >= 110, 20, "110 events at the viewer")
            await trio.sleep(1.0)  # a duplicate would be on its way by now
            assert stats.refused == {} and stats.lost == {}, (stats.refused, stats.lost)
            assert stats.connects == 2 and stats.quota_retries == 0
        got = sorted(m.payload["ioaddress"] for m in viewer.data())
    assert got == list(range(1, 111))  # each exactly once
    log = broker.log.read_text()
    # The resumed session's messages were sent again (DUP) on the second connection.
    assert re.search(rf"Received PUBLISH from {CLIENT} \(d1, q2", log)
    most, failures = broker_in_flight(log)
    dups = len(re.findall(rf"Received PUBLISH from {CLIENT} \(d1, q2", log))
    print(f"\nbroker held at most {most} QoS 1/2 messages of the mirror; {dups} DUP publishes after the thaw")
    assert failures == [], f"PUBREC failures (151 = quota exceeded): {failures}"
    assert 0 < most <= RECEIVE_MAXIMUM, f"the broker held {most} QoS 1/2 messages of the mirror at once"
