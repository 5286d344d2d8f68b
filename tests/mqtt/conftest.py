from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_tool

from .broker import Broker


@pytest.fixture
def broker() -> Iterator[Broker]:
    mosquitto = require_tool("mosquitto", "mosquitto")
    mosquitto_passwd = require_tool("mosquitto_passwd", "mosquitto")
    broker = Broker(mosquitto, mosquitto_passwd)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
