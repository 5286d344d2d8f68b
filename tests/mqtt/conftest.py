from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require_tool

from .broker import Broker


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    """Brokers with extra configuration lines (started; closed at the end of the test)."""
    mosquitto = require_tool("mosquitto", "mosquitto")
    mosquitto_passwd = require_tool("mosquitto_passwd", "mosquitto")
    brokers: list[Broker] = []

    def make(extra_conf: str = "", *, shipped: bool = False) -> Broker:
        broker = Broker(mosquitto, mosquitto_passwd, extra_conf, shipped=shipped)
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """Mosquitto with its defaults (20 QoS 1/2 messages in flight per client)."""
    return make_broker()
