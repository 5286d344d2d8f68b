"""What the mirror delivers, and what it says about what it could not: the child process
(`MirrorProcess`, as the relay runs it) fed directly, a real Mosquitto, real viewers."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from concentrator.mirror.config import MqttConfig, parse_mqtt
from concentrator.mirror.process import MirrorProcess
from concentrator.mirror.queue import MirrorQueue
from concentrator.mirror.stats import MirrorStats
from concentrator.relay.stats import RelayStats
from tests.helpers import wait_for

from .broker import PREFIX, Broker
from .clients import Subscriber
from .test_mirror import mqtt_section

CP56 = bytes.fromhex("0bc40604160b1a")  # 2026-11-22 04:06:50.187, UTC


def float_measurement(ioa: int, value: float = 1.5) -> bytes:
    """M_ME_NC_1, periodic, CA 101: one QoS 0 message."""
    return bytes((13, 1, 1, 0, 101, 0)) + ioa.to_bytes(3, "little") + struct.pack("<f", value) + b"\x00"


def single_point_event(ioa: int, on: bool = True) -> bytes:
    """M_SP_TB_1, spontaneous, CA 101: one QoS 2 message."""
    return bytes((30, 1, 3, 0, 101, 0)) + ioa.to_bytes(3, "little") + bytes((int(on),)) + CP56


@asynccontextmanager
async def mirror_process(
    broker: Broker, /, *, change: Callable[[MqttConfig], MqttConfig] | None = None, **extra: Any
) -> AsyncIterator[tuple[MirrorQueue, MirrorStats]]:
    """The mirror process as the relay runs it; `extra` are keys of the `mqtt:` section
    (`broker` too); `change` alters the parsed configuration (to get past the
    configuration's own checks, for the broker to refuse)."""
    config = parse_mqtt(mqtt_section(broker, **extra), "<test>", ["site-01", "site-02"])
    if change is not None:
        config = change(config)
    relay_stats = RelayStats(mirror=MirrorStats())
    assert relay_stats.mirror is not None
    queue = MirrorQueue(config.queue_limit, relay_stats.mirror, frozenset(config.critical))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(MirrorProcess(config, queue, relay_stats).run)
        yield queue, relay_stats.mirror
        nursery.cancel_scope.cancel()


async def test_a_burst_of_1000_qos2_events_is_delivered_exactly_once(broker: Broker):
    """Mosquitto's default: 20 QoS 1/2 messages in flight per client; it discards the
    rest. The mirror must keep to the Receive Maximum it announces."""
    with Subscriber(broker, "viewer", f"{PREFIX}/#") as viewer:
        async with mirror_process(broker) as (queue, stats):
            await wait_for(lambda: stats.connected, 20, "the mirror connected")
            now = trio.current_time()
            for ioa in range(1, 1001):
                queue.push(single_point_event(ioa), "site-01", now)
            await wait_for(lambda: stats.published_qos2 == 1000, 60, "1,000 QoS 2 messages completed")
            await wait_for(lambda: len(viewer.data()) >= 1000, 10, "1,000 messages at the viewer")
            # Completed means delivered to the broker; a duplicate would already be on
            # its way to the viewer now. Wait for any such to arrive.
            await trio.sleep(1.0)
            assert stats.refused == {} and stats.lost == {} and stats.in_flight == 0
        got = viewer.data()
    assert sorted(m.payload["ioaddress"] for m in got) == list(range(1, 1001))  # each exactly once
    assert {m.qos for m in got} == {2}


async def test_messages_the_acl_denies_are_counted_and_logged_never_published(make_broker, capfd):  # type: ignore[no-untyped-def]
    """A prefix the ACL does not let the concentrator write: MQTT 5 PUBREC says "Not
    authorized"; paho alone would send PUBREL and report success. QoS 0 messages get no
    answer at all: counted as sent, unconfirmable."""
    broker = make_broker("log_type debug")
    with Subscriber(broker, "viewer", "holder/#") as viewer:
        async with mirror_process(broker, prefix="holder/elsewhere") as (queue, stats):
            await wait_for(lambda: stats.connected, 20, "the mirror connected")
            now = trio.current_time()
            for ioa in range(1, 21):
                queue.push(single_point_event(ioa), "site-01", now)
            # 20 events and the mirror's own retained status "online" (QoS 1)
            await wait_for(lambda: sum(stats.refused.values()) == 21, 20, "21 refusals")
            assert stats.broker_read == 0 and stats.in_flight == 0 and stats.lost == {}
            assert stats.refused == {"Not authorized": 21}
            assert stats.last_error.endswith("Not authorized")
            # QoS 0: the broker drops them silently; the broker read them, and that is all
            # the mirror can say: sent, unconfirmable, not published.
            for ioa in range(1, 11):
                queue.push(float_measurement(ioa), "site-01", now)
            await wait_for(lambda: stats.sent_unconfirmable == 10, 20, "10 QoS 0 messages read by the broker")
            assert stats.published_qos2 == 0 and stats.in_flight == 0 and stats.lost == {}
        assert viewer.received() == []
    log = capfd.readouterr().err
    for ioa in range(1, 21):
        assert f"refused a message on holder/elsewhere/north/site-01/101/{ioa}: Not authorized" in log
    assert "Denied PUBLISH from concentrator-test" in broker.log.read_text()  # the broker's side of it
