"""conf/mosquitto/ as shipped (paths pointed at test files): two factors, a certificate
AND a password, for one identity (issue 25: each factor alone is refused, a viewer's
certificate cannot connect as the concentrator whatever password it sends), a revoked
certificate is refused, and the mirror publishes to viewers through it."""

from __future__ import annotations

import ssl
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


def publish_as(broker: Broker, certificate_of: str, username: str, password: str, port: int) -> str:
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
    client.connect("127.0.0.1", port, 30)
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


def test_the_concentrator_needs_its_certificate_and_its_password(shipped: Broker):
    """The concentrator's listener: each factor alone is refused, both together accepted."""
    port, password = shipped.port, PASSWORDS["concentrator"]
    both = shipped.tls_context("concentrator")

    def attempt(context: ssl.SSLContext, username: str, secret: str | None) -> str:
        return try_connect(shipped, context, username, secret, port=port)

    assert attempt(both, "concentrator", password) == "accepted"
    # The certificate alone: a wrong password, no password.
    assert attempt(both, "concentrator", "wrong").startswith("refused: Not authorized")
    assert attempt(both, "concentrator", None).startswith("refused: Not authorized")
    # The password alone: no certificate.
    assert attempt(shipped.tls_context(None), "concentrator", password).startswith(("error", "disconnected"))
    # Another identity's factor: a viewer's certificate with the concentrator's password,
    # the concentrator's certificate with a viewer's credentials.
    assert attempt(shipped.tls_context("viewer"), "concentrator", password).startswith(("error", "disconnected"))
    assert attempt(both, "viewer", PASSWORDS["viewer"]).startswith("refused: Not authorized")
    log = shipped.log.read_text()
    assert "certificate verify failed" in log or "peer did not return a certificate" in log, log


def test_a_viewer_needs_its_certificate_and_a_viewer_password(shipped: Broker):
    port = shipped.viewer_port
    viewer = shipped.tls_context("viewer")
    assert try_connect(shipped, viewer, "viewer", PASSWORDS["viewer"], port=port) == "accepted"
    assert try_connect(shipped, viewer, "viewer", "wrong", port=port).startswith("refused: Not authorized")
    assert try_connect(shipped, shipped.tls_context(None), "viewer", PASSWORDS["viewer"], port=port).startswith(
        ("error", "disconnected")
    )
    # The concentrator's user is not known on the viewers' listener, with either certificate.
    concentrator = PASSWORDS["concentrator"]
    assert try_connect(shipped, viewer, "concentrator", concentrator, port=port).startswith("refused: Not authorized")
    assert try_connect(
        shipped, shipped.tls_context("concentrator"), "concentrator", concentrator, port=port
    ).startswith(("error", "disconnected"))


def test_a_viewer_cannot_publish_even_with_both_factors(shipped: Broker):
    assert publish_as(shipped, "viewer", "viewer", PASSWORDS["viewer"], shipped.viewer_port) == "Not authorized"
    assert "Denied PUBLISH from forger-viewer" in shipped.log.read_text()  # logged by the broker
    assert publish_as(shipped, "concentrator", "concentrator", PASSWORDS["concentrator"], shipped.port) == "accepted"


def test_a_revoked_certificate_is_refused(shipped: Broker):
    assert try_connect(shipped, shipped.tls_context("viewer"), "viewer", PASSWORDS["viewer"]) == "accepted"
    refused = try_connect(shipped, shipped.tls_context("revoked"), "viewer", PASSWORDS["viewer"])
    assert refused != "accepted", refused
    # The same CA, the same user: only the CRL differs (OpenSSL: verification failed).
    assert "certificate verify failed" in shipped.log.read_text()
