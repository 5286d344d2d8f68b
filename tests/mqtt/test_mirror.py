"""The MQTT mirror against a real Mosquitto with TLS, client certificates, passwords and
an ACL: 2 simulated UPDCs (c104), the relay, a simulated BMI, and subscribers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from concentrator.cli import feature_relay
from concentrator.iec104.asdu import AsduHeader
from concentrator.iec104.decode import decode_asdu
from concentrator.mirror.config import parse_mqtt
from concentrator.mirror.queue import MirrorQueue
from concentrator.relay.driver import Relay
from concentrator.sim.bmi import BmiSimulator
from concentrator.sim.points import IOA_BREAKER, IOA_TOTAL_POWER
from concentrator.sim.updc import UpdcSimulator
from tests.helpers import relay_config, wait_for

from .broker import PASSWORDS, PREFIX, Broker
from .clients import Subscriber, try_connect, wait_until

FIRST_CA = 101
M_DP_TB_1, M_ME_TF_1 = 31, 36


def mqtt_section(broker: Broker, /, **extra: Any) -> dict[str, Any]:
    cert, key = broker.client_files("concentrator")
    credentials = broker.directory / "concentrator.cred"
    credentials.write_text(f"concentrator:{PASSWORDS['concentrator']}\n")
    return {
        "broker": f"127.0.0.1:{broker.port}",
        "client_id": "concentrator-test",
        "tls": {"ca_file": str(broker.pki.ca), "cert_file": str(cert), "key_file": str(key)},
        "credentials_file": str(credentials),
        "prefix": PREFIX,
        "default_area": "south",
        "areas": {"site-01": "north"},
        **extra,
    }


@asynccontextmanager
async def running(
    updcs: list[UpdcSimulator], broker: Broker, **extra: Any
) -> AsyncIterator[tuple[Relay, BmiSimulator]]:
    config = relay_config([u.port for u in updcs])
    mqtt = parse_mqtt(mqtt_section(broker, **extra), "<test>", [s.name for s in config.sites])
    config = dataclasses.replace(config, mqtt=mqtt)
    with ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            relay = feature_relay(config)
            await nursery.start(relay.run)
            bmi = BmiSimulator("127.0.0.1", relay.listen_port, [u.common_address for u in updcs])
            stack.callback(bmi.stop)
            bmi.start()
            assert await trio.to_thread.run_sync(bmi.wait_started, 10.0), "the BMI never got started"
            await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="all sites started")
            yield relay, bmi
            nursery.cancel_scope.cancel()


async def test_measurements_at_qos0_and_a_breaker_change_at_qos2(updcs: list[UpdcSimulator], broker: Broker):
    with Subscriber(broker, "viewer", f"{PREFIX}/#") as viewer:
        async with running(updcs, broker) as (relay, _bmi):
            stats = relay.stats.mirror
            assert stats is not None
            await wait_for(lambda: stats.connected, what="the mirror connected")

            def measurements() -> list[Any]:
                return [m for m in viewer.data() if m.payload["type_id"] == M_ME_TF_1]

            await wait_for(
                lambda: {m.payload["site"] for m in measurements()} == {"site-01", "site-02"},
                what="measured values of both sites at the viewer",
            )
            target = updcs[1]
            before = target.breaker_closed
            assert target.toggle_breaker() != before
            await wait_for(
                lambda: any(m.payload["type_id"] == M_DP_TB_1 and m.payload["cause"] == 3 for m in viewer.data()),
                what="the breaker change at the viewer",
            )
        got = viewer.data()

    # Measured values: QoS 0, topic <prefix>/<area>/<site>/<ca>/<ioa>, and exactly what the
    # site sent (value, time tag, quality) for the ASDUs found in the site's own log.
    sent = {ca: [a for a in u.sent_asdus()] for ca, u in ((u.common_address, u) for u in updcs)}
    sample = next(m for m in got if m.payload["type_id"] == M_ME_TF_1 and m.payload["site"] == "site-01")
    assert sample.qos == 0
    p = sample.payload
    assert sample.topic == f"{PREFIX}/north/site-01/{FIRST_CA}/{p['ioaddress']}"
    matches = [
        obj
        for asdu in sent[FIRST_CA]
        if asdu[0] == M_ME_TF_1
        for obj in decode_asdu(asdu).objects
        if obj.address == p["ioaddress"] and obj.time is not None and obj.time.isoformat() == p["timetag"]
    ]
    assert matches, f"no ASDU sent by site-01 has the time tag {p['timetag']}"
    assert p["value"] == matches[0].value and p["quality"]["raw"] == matches[0].quality.raw
    assert p["quality"] == {"raw": 0, "iv": False, "nt": False, "sb": False, "bl": False, "ov": False, "ei": False}
    assert p["timetag_invalid"] is False and p["common_address"] == FIRST_CA and p["received"].endswith("Z")
    assert any(m.payload["ioaddress"] == IOA_TOTAL_POWER for m in got)
    assert all(m.qos == 0 for m in got if m.payload["type_id"] == M_ME_TF_1)

    # The breaker change: QoS 2, default area, value and time tag as sent.
    change = next(m for m in got if m.payload["type_id"] == M_DP_TB_1 and m.payload["cause"] == 3)
    assert change.qos == 2
    assert change.topic == f"{PREFIX}/south/site-02/{FIRST_CA + 1}/{IOA_BREAKER}"
    sent_change = next(a for a in sent[FIRST_CA + 1] if a[0] == M_DP_TB_1 and AsduHeader.parse(a).cause == 3)
    obj = decode_asdu(sent_change).objects[0]
    assert change.payload["ioaddress"] == IOA_BREAKER == obj.address
    assert change.payload["value"] == obj.value == (2 if target.breaker_closed else 1)
    assert change.payload["timetag"] == obj.time.isoformat() and change.payload["timetag_invalid"] is False
    assert change.payload["quality"]["raw"] == obj.quality.raw


async def test_critical_measurement_goes_at_qos2(updcs: list[UpdcSimulator], broker: Broker):
    with Subscriber(broker, "viewer", f"{PREFIX}/+/site-01/#") as viewer:
        async with running(updcs, broker, critical={"site-01": [IOA_TOTAL_POWER]}):
            await wait_for(
                lambda: {m.payload["ioaddress"] for m in viewer.data()} >= {IOA_TOTAL_POWER, IOA_TOTAL_POWER + 1},
                what="total and load power of site-01",
            )
        got = viewer.data()
    assert {m.qos for m in got if m.payload["ioaddress"] == IOA_TOTAL_POWER} == {2}
    assert {m.qos for m in got if m.payload["ioaddress"] == IOA_TOTAL_POWER + 1} == {0}


def wait_logged(broker: Broker, text: str) -> None:
    """The broker may write its log line after the client has already seen the refusal."""
    wait_until(lambda: text in broker.log.read_text(), 5.0, f"the broker to log {text!r}")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_broker_refuses_no_certificate_wrong_password_and_tls11(broker: Broker):
    assert try_connect(broker, broker.tls_context("viewer"), "viewer", PASSWORDS["viewer"]) == "accepted"
    # No client certificate: the TLS handshake fails (or the broker drops the connection).
    no_cert = try_connect(broker, broker.tls_context(None), "viewer", PASSWORDS["viewer"])
    assert no_cert != "accepted"
    assert no_cert.startswith(("error:", "disconnected:", "no answer")), no_cert
    wait_logged(broker, "peer did not return a certificate")
    wrong = try_connect(broker, broker.tls_context("viewer"), "viewer", "not-the-password")
    assert wrong.startswith("refused") or wrong.startswith("disconnected"), wrong
    tls11 = try_connect(broker, broker.tls_context("viewer", tls11=True), "viewer", PASSWORDS["viewer"])
    assert tls11.startswith("error:") and "PROTOCOL_VERSION" in tls11, tls11
    wait_logged(broker, "unsupported protocol")


async def test_a_user_without_read_permission_receives_nothing(updcs: list[UpdcSimulator], broker: Broker):
    with Subscriber(broker, "nobody", f"{PREFIX}/#") as nobody, Subscriber(broker, "viewer", f"{PREFIX}/#") as viewer:
        async with running(updcs, broker):
            await wait_for(lambda: len(viewer.data()) >= 20, what="20 messages at the viewer")
            # Same broker, same time: whatever the viewer got, nobody could have got too.
            await trio.sleep(0.2)  # let anything already routed to `nobody` arrive (not an assertion)
        assert nobody.received() == []


async def test_broker_outage_does_not_touch_the_relay(updcs: list[UpdcSimulator], broker: Broker):
    async with running(updcs, broker, queue_limit=20) as (relay, bmi):
        stats = relay.stats.mirror
        assert stats is not None
        await wait_for(lambda: stats.connected and stats.sent_unconfirmable > 10, what="the mirror publishing")
        site_stats = [s.stats for s in relay.sites]
        count0 = sum(s.latency_up.count for s in site_stats)
        total0 = sum(s.latency_up.total for s in site_stats)
        at_bmi = len(bmi.received_asdus())

        await trio.to_thread.run_sync(broker.stop)
        await wait_for(lambda: not stats.connected, what="the mirror noticing the outage")
        dropped = stats.dropped
        await wait_for(lambda: stats.dropped > dropped + 20, what="drops counted while the broker is away")
        # The relay went on: new ASDUs reached the BMI, byte identical, and forwarding
        # latency stayed where it was.
        await wait_for(lambda: len(bmi.received_asdus()) > at_bmi + 20, what="ASDUs at the BMI during the outage")
        count1 = sum(s.latency_up.count for s in site_stats)
        total1 = sum(s.latency_up.total for s in site_stats)
        assert count1 > count0
        assert (total1 - total0) / (count1 - count0) < 0.005, "forwarding slowed down during the outage"
        assert sum(len(t) for t in relay.core.taps if isinstance(t, MirrorQueue)) <= 20

        await trio.to_thread.run_sync(broker.start)
        published = stats.broker_read
        await wait_for(lambda: stats.connected, timeout=20, what="the mirror reconnecting by itself")
        await wait_for(lambda: stats.broker_read > published + 10, what="publishing again after the outage")
        with Subscriber(broker, "viewer", f"{PREFIX}/#") as viewer:
            await wait_for(lambda: len(viewer.data()) > 5, what="messages at a viewer after the outage")

    received: dict[int, list[bytes]] = {}
    for asdu in bmi.received_asdus():
        received.setdefault(AsduHeader.parse(asdu).common_address, []).append(asdu)
    for updc in updcs:
        got, sent = received[updc.common_address], updc.sent_asdus()
        assert got == sent[: len(got)], f"{updc.name}: relayed ASDUs differ from what it sent"


async def test_no_broker_at_start_the_relay_relays_and_the_mirror_keeps_trying(
    updcs: list[UpdcSimulator], broker: Broker
):
    await trio.to_thread.run_sync(broker.stop)
    async with running(updcs, broker, queue_limit=10) as (relay, bmi):
        stats = relay.stats.mirror
        assert stats is not None
        await wait_for(lambda: stats.connect_failures >= 2, what="two failed connection attempts")
        await wait_for(lambda: len(bmi.received_asdus()) > 20, what="ASDUs at the BMI without a broker")
        assert not stats.connected and stats.broker_read == 0 and stats.dropped > 0
        await trio.to_thread.run_sync(broker.start)
        await wait_for(lambda: stats.connected and stats.broker_read > 0, timeout=20, what="the mirror publishing")


def test_a_viewer_cannot_publish_into_the_mirror(broker: Broker):
    """Viewers only read: what one publishes under the prefix reaches nobody. (The
    concentrator subscribes to nothing, so nothing published could reach the relay.)"""
    with Subscriber(broker, "viewer", f"{PREFIX}/#") as watcher:
        with Subscriber(broker, "viewer", "unused/+", client_id="viewer-writer") as writer:
            forged = writer.client.publish(f"{PREFIX}/north/site-01/101/3001", b'{"value": 1}', qos=1)
            forged.wait_for_publish(5)
        # Mosquitto routes a message before it acknowledges it: once the PUBACK came, a
        # control message sent afterwards arrives after anything the forged one caused.
        with Subscriber(broker, "concentrator", "unused/+", client_id="control") as control:
            control.client.publish(f"{PREFIX}/control", b'{"control": true}', qos=1).wait_for_publish(5)
        wait_until(lambda: any(m.topic == f"{PREFIX}/control" for m in watcher.received()), 5, "the control message")
        assert [m.topic for m in watcher.received()] == [f"{PREFIX}/control"]
