"""Plain paho clients for the tests (threaded loop: they are the broker's other users,
not the code under test)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .broker import PASSWORDS, Broker


@dataclass(frozen=True)
class Received:
    topic: str
    qos: int
    payload: dict[str, Any]


def try_connect(
    broker: Broker,
    context: ssl.SSLContext,
    user: str,
    password: str | None,
    timeout: float = 5.0,
    *,
    port: int | None = None,
) -> str:
    """'accepted', or why not: the CONNACK's reason, or the TLS/socket error. `port`: the
    listener (by default, the one for `user`); password None: none sent."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{user}", protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    client.username_pw_set(user, password)
    result: list[str] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result.append("accepted" if not reason.is_failure else f"refused: {reason}")
        done.set()

    def on_disconnect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result.append(f"disconnected: {reason}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", port or broker.port_for(user), 30)
    except (OSError, ssl.SSLError) as exc:
        return f"error: {exc!r}"
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0] if result else "no answer"


class Subscriber:
    """Subscribes to `topic` at QoS 2 and records what arrives (with its delivered QoS,
    which is the publisher's QoS when that is lower)."""

    def __init__(
        self, broker: Broker, user: str, topic: str, *, client_id: str | None = None, persistent: bool = False
    ) -> None:
        """persistent: a session the broker keeps while the viewer is away (QoS 2
        messages are queued for it), and a quick reconnection after a broker restart."""
        self.user = user
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{user}", protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )  # fmt: skip
        self.client.reconnect_delay_set(1, 1)
        self.client.tls_set_context(broker.tls_context(user))
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = lambda c, u, f, reason, p: c.subscribe(topic, qos=2)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.broker = broker

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, message.qos, json.loads(message.payload)))

    def __enter__(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.broker.port_for(self.user), 30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.__exit__()
            raise AssertionError("subscription not confirmed within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def data(self) -> list[Received]:
        """The site data, without the retained status messages."""
        return [m for m in self.received() if not m.topic.endswith("/status")]

    def statuses(self) -> list[Received]:
        return [m for m in self.received() if m.topic.endswith("/status")]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
