"""conf/mosquitto/ as shipped (paths pointed at test files): the certificate is the user
(a viewer's certificate cannot publish as the concentrator, whatever password it sends),
a revoked certificate is refused, and the mirror publishes to viewers through it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import wait_for

from .broker import PASSWORDS, PREFIX, Broker
from .clients import Subscriber, try_connect
from .test_delivery import mirror_process, single_point_event


def publish_as(broker: Broker, certificate_of: str, username: str, password: str) -> str:
    """Publish one QoS 1 message under the prefix with `certificate_of`'s certificate and
    the given username and password (MQTT 5): "accepted", or the PUBACK's failure reason."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{certificate_of}", protocol=mqtt.MQTTv5)
    client.tls_set_context(broker.tls_context(certificate_of))
    client.username_pw_set(username, password)
    reasons: list[str] = []
    done = threading.Event()

    def on_publish(c: mqtt.Client, u: Any, mid: int, reason: Any, props: Any) -> None:
        reasons.append("accepted" if not reason.is_failure else str(reason))  # e.g. "No matching subscribers"
        done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", broker.port, 30)
    client.loop_start()
    try:
        client.publish(f"{PREFIX}/north/site-01/101/1001", b'{"value": 1}', qos=1)
        assert done.wait(10), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


@pytest.fixture
def shipped(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(shipped=True)


async def test_the_mirror_publishes_through_the_shipped_broker(shipped: Broker):
    with Subscriber(shipped, "viewer", f"{PREFIX}/#") as viewer:
        async with mirror_process(shipped) as (queue, stats):
            await wait_for(lambda: stats.connected, 20, "the mirror connected")
            for ioa in range(1, 6):
                queue.push(single_point_event(ioa), "site-01", trio.current_time())
            await wait_for(lambda: len(viewer.data()) == 5, 10, "5 messages at the viewer")
            await wait_for(lambda: stats.published_qos2 == 5, 5, "the child's counters")  # every 0.2 s
            assert stats.refused == {}


def test_a_viewer_certificate_cannot_publish_with_the_concentrators_password(shipped: Broker):
    assert publish_as(shipped, "concentrator", "concentrator", PASSWORDS["concentrator"]) == "accepted"
    assert publish_as(shipped, "viewer", "concentrator", PASSWORDS["concentrator"]) == "Not authorized"
    assert "Denied PUBLISH from forger-viewer" in shipped.log.read_text()  # logged by the broker


def test_a_revoked_certificate_is_refused(shipped: Broker):
    assert try_connect(shipped, shipped.tls_context("viewer"), "viewer", PASSWORDS["viewer"]) == "accepted"
    refused = try_connect(shipped, shipped.tls_context("revoked"), "viewer", PASSWORDS["viewer"])
    assert refused != "accepted", refused
    # The same CA, the same user: only the CRL differs (OpenSSL: verification failed).
    assert "certificate verify failed" in shipped.log.read_text()
