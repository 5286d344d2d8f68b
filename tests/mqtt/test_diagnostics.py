"""What the mirror says when the broker will not have it, each refusal in its own
words, and what it says when things go right: connected, retry delays as logged,
DISCONNECT on the way out. A real Mosquitto; the mirror process logs to our stderr."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from concentrator.mirror.config import MqttConfig
from tests.helpers import wait_for

from .broker import Broker, Pki
from .test_delivery import mirror_process

LOGGER = "concentrator.mirror.process"  # the child logs at this logger's level


async def attempts(broker: Broker, capfd: pytest.CaptureFixture[str], change: Callable[[MqttConfig], MqttConfig],
                   count: int = 2) -> str:  # fmt: skip
    async with mirror_process(broker, change=change) as (_, stats):
        await wait_for(lambda: stats.connect_failures >= count, 20, f"{count} failed attempts")
        assert not stats.connected and stats.connects == 0
        last_error = stats.last_error
    err = capfd.readouterr().err
    assert last_error and last_error in err
    return err


def tls(config: MqttConfig, **files: Path) -> MqttConfig:
    return dataclasses.replace(config, tls=dataclasses.replace(config.tls, **{k: str(v) for k, v in files.items()}))


async def test_wrong_password(broker: Broker, capfd: pytest.CaptureFixture[str]):
    err = await attempts(broker, capfd, lambda c: dataclasses.replace(c, password="wrong"))
    # Mosquitto 2.0 says "Not authorized" (0x87) for a wrong password, not 0x86.
    assert "refused: not authorised (Not authorized): wrong username or password (check credentials_file)" in err, err


async def test_broker_certificate_not_trusted(broker: Broker, capfd: pytest.CaptureFixture[str], tmp_path: Path):
    other = Pki(tmp_path)
    err = await attempts(broker, capfd, lambda c: tls(c, ca_file=other.ca))
    # (the other CA has the same name as the broker's: OpenSSL then finds a bad signature)
    verify = r"TLS: the broker.s certificate failed verification: (certificate signature failure|unable to get local)"
    assert re.search(verify, err), err


async def test_our_certificate_refused_by_the_broker(broker: Broker, capfd: pytest.CaptureFixture[str],
                                                     tmp_path: Path):  # fmt: skip
    cert, key = Pki(tmp_path).issue("stranger")  # from a CA the broker does not know
    err = await attempts(broker, capfd, lambda c: tls(c, cert_file=cert, key_file=key))
    assert re.search(r"TLS: the broker refused the handshake \(\w*ALERT\w*\): check our certificate", err), err


async def test_our_certificate_expired(broker: Broker, capfd: pytest.CaptureFixture[str]):
    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    cert, key = broker.pki.issue("concentrator-expired", not_after=expired)
    err = await attempts(broker, capfd, lambda c: tls(c, cert_file=cert, key_file=key))
    assert re.search(r"TLS: the broker refused the handshake \(\w*CERTIFICATE_EXPIRED\)", err), err


async def test_connected_retry_delays_and_disconnect(broker: Broker, capfd: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture):  # fmt: skip
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with mirror_process(broker) as (_, stats):
        await wait_for(lambda: stats.connected, 20, "connected")
        await trio.to_thread.run_sync(broker.stop)
        await wait_for(lambda: stats.connect_failures >= 3, 20, "three failed attempts")
        await trio.to_thread.run_sync(broker.start)
        await wait_for(lambda: stats.connected, 20, "connected again")
    await trio.sleep(0.5)
    err = capfd.readouterr().err
    assert "MQTT mirror connected to 127.0.0.1:" in err and "receive maximum 20" in err
    # Each "retrying in N s" is followed by the next attempt N s later (log timestamps).
    retrying = re.findall(r"^(\S+ \S+) WARNING mqtt-mirror: .*; retrying in ([\d.]+) s$", err, re.M)
    stamps = [(datetime.datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f"), float(delay)) for at, delay in retrying]
    assert [delay for _, delay in stamps[:3]] == [0.5, 1.0, 2.0], err  # after a good session: soon, then back off
    for (at, delay), (next_at, _) in zip(stamps, stamps[1:], strict=False):
        assert delay - 0.05 <= (next_at - at).total_seconds() <= delay + 0.6, (at, delay, next_at)
    assert "MQTT mirror disconnected from 127.0.0.1:" in err
    broker_log = broker.log.read_text()
    assert "Client concentrator-test disconnected." in broker_log  # our DISCONNECT, not a dropped socket
