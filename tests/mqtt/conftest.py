from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from concentrator.sim.updc import UpdcSimulator
from tests.conftest import require_tool

from .broker import Broker, Pki


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


@pytest.fixture
def updcs() -> Iterator[list[UpdcSimulator]]:
    """Two simulated UPDCs (c104), CA 101 and 102, a sample every 0.1 s."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(UpdcSimulator(f"site-{n + 1:02d}", 101 + n, sample_period=0.1, seed=n))
            for n in range(2)
        ]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    pki = Pki(tmp_path)
    cert, key = pki.issue("c")
    (tmp_path / "cred").write_text("concentrator:s3cret\n")
    return {
        "broker": "127.0.0.1:8883",
        "tls": {"ca_file": str(pki.ca), "cert_file": str(cert), "key_file": str(key)},
        "credentials_file": str(tmp_path / "cred"),
        "prefix": "holder/concentrator",
    }
