"""The mirror's parts without a broker: the bounded queue's drop order, the `mqtt:`
configuration section, topics/payloads/QoS, and the exported metrics."""

from __future__ import annotations

import datetime
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from concentrator.config import ConfigError, parse_config
from concentrator.mirror.config import MqttConfig
from concentrator.mirror.payload import messages
from concentrator.mirror.queue import MirrorQueue
from concentrator.mirror.stats import MirrorStats
from concentrator.relay.stats import RelayStats
from monitoring.relay_metrics import RelayMetrics
from tests.helpers import relay_config

CP56 = bytes.fromhex("0bc40604160b1a")
MEASUREMENT = bytes((36, 1, 3, 0, 101, 0)) + (1001).to_bytes(3, "little") + struct.pack("<f", 5.5) + b"\x00" + CP56
BREAKER = bytes((31, 1, 3, 0, 101, 0)) + (2001).to_bytes(3, "little") + b"\x01" + CP56
COMMAND_CON = bytes.fromhex("2e0107006500b90b0081")  # C_DC_NA_1 activation confirmation, select OFF
PARAMETER = bytes((110, 1, 20, 0, 101, 0)) + (4001).to_bytes(3, "little") + b"\x00\x40\x01"  # P_ME_NA_1


def test_queue_drops_oldest_cyclic_measurements_first():
    stats = MirrorStats()
    queue = MirrorQueue(3, stats)
    queue.push(MEASUREMENT, "a", 1.0)
    queue.push(BREAKER, "a", 2.0)
    queue.push(MEASUREMENT, "a", 3.0)
    queue.push(MEASUREMENT, "a", 4.0)  # full: the measurement of t=1 goes
    queue.push(BREAKER, "a", 5.0)  # full: the measurement of t=3 goes, not the breaker of t=2
    assert stats.dropped == 2 and stats.queued == 5 and len(queue) == 3
    assert [queue.pop().received_at for _ in range(3)] == [2.0, 4.0, 5.0]  # arrival order kept
    assert queue.pop() is None and stats.queue_length == 0


def test_queue_drops_oldest_event_when_only_events_are_left():
    stats = MirrorStats()
    queue = MirrorQueue(2, stats)
    for t in (1.0, 2.0, 3.0):
        queue.push(BREAKER, "a", t)
    assert stats.dropped == 1 and [queue.pop().received_at for _ in range(2)] == [2.0, 3.0]


def test_measurements_of_a_site_with_critical_points_are_kept_like_events():
    stats = MirrorStats()
    queue = MirrorQueue(2, stats, critical_sites=frozenset({"crit"}))
    queue.push(MEASUREMENT, "crit", 1.0)
    queue.push(MEASUREMENT, "plain", 2.0)
    queue.push(MEASUREMENT, "crit", 3.0)
    assert [(e.site, e.received_at) for e in (queue.pop(), queue.pop())] == [("crit", 1.0), ("crit", 3.0)]


def config_with(mqtt: dict[str, Any]) -> MqttConfig:
    base = relay_config([2404, 2405])
    data: dict[str, Any] = {
        "uplink": {"listen": f"{base.uplink.listen}", "allowed_peers": ["127.0.0.1"]},
        "sites": [
            {"name": s.name, "common_addresses": list(s.common_addresses), "endpoints": [str(s.endpoints[0])],
             "interruptibility": s.interruptibility}
            for s in base.sites
        ],
        "mqtt": mqtt,
    }  # fmt: skip
    config = parse_config(data, "conf.yaml")
    assert config.mqtt is not None
    return config.mqtt


def test_config_section(files: dict[str, Any]):
    mqtt = config_with({**files, "areas": {"site-01": "north"}, "critical": {"site-02": [1001]}})
    assert (mqtt.username, mqtt.password) == ("concentrator", "s3cret")
    assert "s3cret" not in repr(mqtt)
    assert mqtt.area("site-01") == "north" and mqtt.area("site-02") == "default"
    assert mqtt.is_critical("site-02", 1001) and not mqtt.is_critical("site-01", 1001)
    assert relay_config([2404]).mqtt is None  # the section is optional


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"broker": "127.0.0.1"}, "mqtt.broker"),
        ({"prefix": "a/#"}, "mqtt.prefix"),
        ({"areas": {"site-99": "x"}}, "mqtt.areas.site-99"),
        ({"areas": {"site-01": "a/b"}}, "mqtt.areas.site-01"),
        ({"critical": {"site-01": []}}, "mqtt.critical.site-01"),
        ({"critical": {"site-01": [True]}}, "mqtt.critical.site-01[0]"),
        ({"queue_limit": 0}, "mqtt.queue_limit"),
        ({"credentials_file": "/nonexistent"}, "mqtt.credentials_file"),
        ({"typo": 1}, "mqtt.typo"),
    ],
)
def test_config_errors_name_the_key(files: dict[str, Any], change: dict[str, Any], key: str):
    with pytest.raises(ConfigError) as error:
        config_with({**files, **change})
    assert error.value.key == key and error.value.file == "conf.yaml"


def test_credentials_file_without_password_is_refused_without_echoing_it(files: dict[str, Any], tmp_path: Path):
    (tmp_path / "cred").write_text("only-a-secret-line\n")
    with pytest.raises(ConfigError) as error:
        config_with(files)
    assert "only-a-secret-line" not in str(error.value)


RECEIVED = datetime.datetime(2026, 11, 22, 4, 0, tzinfo=datetime.UTC).timestamp()


def test_messages_topics_payloads_and_qos(files: dict[str, Any]):
    mqtt = config_with({**files, "areas": {"site-01": "north"}})
    [(topic, payload, qos)], failed = messages(mqtt, MEASUREMENT, "site-01", RECEIVED)
    body = json.loads(payload)
    assert (topic, qos, failed) == ("holder/concentrator/north/site-01/101/1001", 0, False)
    assert body["value"] == 5.5 and body["ioaddress"] == 1001 and body["type"] == "M_ME_TF_1"
    assert body["timetag"] == "2026-11-22T04:06:50.187Z" and body["timetag_invalid"] is False
    assert body["timetag_raw"] == CP56.hex() and body["timetag_summer"] is False
    assert body["quality"] == {"raw": 0, "iv": False, "nt": False, "sb": False, "bl": False, "ov": False,
                               "ei": False}  # fmt: skip
    assert body["cause"] == 3 and body["common_address"] == 101
    assert body["received"] == "2026-11-22T04:00:00.000000Z" and body["site"] == "site-01"
    [(topic, payload, qos)], _ = messages(mqtt, BREAKER, "site-02", RECEIVED)
    breaker = json.loads(payload)
    assert (topic, qos, breaker["value"]) == ("holder/concentrator/default/site-02/101/2001", 2, 1)
    assert breaker["quality"]["raw"] == 0  # DPI 1 (OFF) is the value, not quality
    # A command confirmation: decoded, at QoS 2, with its qualifier.
    [(topic, payload, qos)], failed = messages(mqtt, COMMAND_CON, "site-01", RECEIVED)
    confirmation = json.loads(payload)
    assert not failed and qos == 2 and topic.endswith("/101/3001")
    assert confirmation["type"] == "C_DC_NA_1" and confirmation["cause"] == 7 and confirmation["value"] == 1
    assert confirmation["select"] is True and confirmation["quality"] is None and confirmation["timetag"] is None
    # Raw only for what the decoder does not know.
    [(_, payload, qos)], failed = messages(mqtt, PARAMETER, "site-01", RECEIVED)
    assert failed and qos == 2 and json.loads(payload)["asdu"] == PARAMETER.hex()
    critical = config_with({**files, "critical": {"site-01": [1001]}})
    assert messages(critical, MEASUREMENT, "site-01", RECEIVED)[0][0][2] == 2


def test_time_tags_in_the_site_zone(files: dict[str, Any]):
    """A site whose clock runs on Italian time, summer time bit set in the hour that repeats."""
    mqtt = config_with({**files, "time_zones": {"site-01": "Europe/Rome"}})
    tag = bytes((0, 0, 30, 0x80 | 2, 25, 10, 26))  # 2026-10-25 02:30:00.000, SU set
    frame = bytes((30, 1, 3, 0, 101, 0)) + (2002).to_bytes(3, "little") + b"\x01" + tag
    [(_, payload, _)], _ = messages(mqtt, frame, "site-01", RECEIVED)
    body = json.loads(payload)
    assert body["timetag"] == "2026-10-25T02:30:00.000+02:00" and body["timetag_summer"] is True
    assert body["timetag_raw"] == tag.hex()
    [(_, payload, _)], _ = messages(mqtt, frame, "site-02", RECEIVED)  # site-02: UTC, the default
    assert json.loads(payload)["timetag"] == "2026-10-25T02:30:00.000Z"
    with pytest.raises(ConfigError) as error:
        config_with({**files, "time_zones": {"site-01": "Mars/Olympus"}})
    assert error.value.key == "mqtt.time_zones.site-01"


def test_mirror_metrics_are_exported():
    mirror = MirrorStats(sent_unconfirmable=5, quota_retries=11, published_qos2=2, dropped=3, connected=True,
                         queue_length=4, child_queue_length=6, in_flight=7, refused={"Not authorized": 8},
                         lost={"disconnect/0": 9, "queue_full/0": 10}, oldest_unpublished=time.time() - 30,
                         last_error="broker refused x: Not authorized")  # fmt: skip
    text = RelayMetrics(RelayStats(mirror=mirror), relay_config([2404]), lambda: 0.0).exposition().decode()
    samples = {
        (s.name, tuple(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert samples[("concentrator_mirror_broker_connected", ())] == 1
    assert samples[("concentrator_mirror_sent_unconfirmable_messages_total", ())] == 5
    assert ("concentrator_mirror_published_messages_total", (("qos", "0"),)) not in samples
    assert samples[("concentrator_mirror_published_messages_total", (("qos", "2"),))] == 2
    assert samples[("concentrator_mirror_dropped_asdus_total", ())] == 3
    assert samples[("concentrator_mirror_quota_retries_total", ())] == 11
    assert samples[("concentrator_mirror_queue_length", (("side", "relay"),))] == 4
    assert samples[("concentrator_mirror_queue_length", (("side", "child"),))] == 6
    assert samples[("concentrator_mirror_in_flight_messages", ())] == 7
    assert samples[("concentrator_mirror_refused_messages_total", (("reason", "Not authorized"),))] == 8
    assert samples[("concentrator_mirror_refused_messages_total", (("reason", "Quota exceeded"),))] == 0
    assert samples[("concentrator_mirror_lost_messages_total", (("qos", "0"), ("reason", "disconnect")))] == 9
    assert samples[("concentrator_mirror_lost_messages_total", (("qos", "0"), ("reason", "queue_full")))] == 10
    assert samples[("concentrator_mirror_lost_messages_total", (("qos", "2"), ("reason", "shutdown")))] == 0
    assert 29 < samples[("concentrator_mirror_oldest_unpublished_age_seconds", ())] < 40
    assert samples[("concentrator_mirror_last_error_info", (("error", "broker refused x: Not authorized"),))] == 1
    idle = RelayMetrics(RelayStats(mirror=MirrorStats()), relay_config([2404]), lambda: 0.0).exposition().decode()
    assert "concentrator_mirror_oldest_unpublished_age_seconds 0.0" in idle and "last_error" not in idle
    without = RelayMetrics(RelayStats(), relay_config([2404]), lambda: 0.0).exposition().decode()
    assert "mirror" not in without


# ------------------------------------------------------------------ resumed sessions (issue 25)
class _Publisher:
    """What MirrorClient calls back on its publisher."""

    def __init__(self) -> None:
        self.quota: list[int] = []

    def on_quota_exceeded(self, mid: int) -> None:
        self.quota.append(mid)


def _client_holding(states: list[tuple[int, Any, bool]]) -> tuple[Any, _Publisher]:
    """A MirrorClient (not connected) whose session holds messages (qos, state, dup)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from concentrator.mirror.publisher import MirrorClient

    publisher = _Publisher()
    client = MirrorClient(publisher, callback_api_version=CallbackAPIVersion.VERSION2, client_id="t",  # type: ignore[arg-type]
                          protocol=mqtt.MQTTv5)  # fmt: skip
    for mid, (qos, state, dup) in enumerate(states, start=1):
        message = mqtt.MQTTMessage(mid, b"t")
        message.qos, message.state, message.dup = qos, state, dup
        client._out_messages[mid] = message
    return client, publisher


def test_a_resumed_session_sends_no_more_than_receive_maximum_again():
    from paho.mqtt.enums import MessageState as S

    states = [(2, S.MQTT_MS_PUBLISH, False)] * 6 + [(0, S.MQTT_MS_PUBLISH, False)]  # never sent; a QoS 0
    states += [(2, S.MQTT_MS_PUBLISH, True)] * 3 + [(2, S.MQTT_MS_RESEND_PUBREL, False)] * 2  # sent before
    client, _ = _client_holding(states)
    assert client.resume_within(4) == 7
    held = list(client._out_messages.values())
    # QoS 0 (not counted), the PUBRELs, the PUBLISHes sent before; beyond 4, queued and last.
    assert [m.mid for m in held] == [7, 11, 12, 8, 9, 10, 1, 2, 3, 4, 5, 6]
    assert [m.state for m in held[5:]] == [S.MQTT_MS_QUEUED] * 7 and S.MQTT_MS_QUEUED not in [m.state for m in held[:5]]


def test_a_quota_refusal_is_queued_again_not_given_up():
    from paho.mqtt.enums import MessageState as S

    client, publisher = _client_holding([(2, S.MQTT_MS_WAIT_FOR_PUBREC, False)])
    client._inflight_messages = 1
    client._in_packet["packet"] = b"\x00\x01\x97"  # PUBREC for mid 1, reason code 0x97
    client._handle_pubrec()
    message = client._out_messages[1]  # still held: it will go out again
    assert message.state == S.MQTT_MS_QUEUED and client._inflight_messages == 0 and publisher.quota == [1]
    client.retry_queued()
    assert message.state == S.MQTT_MS_WAIT_FOR_PUBREC and client._inflight_messages == 1  # sent again
    # Any other failure ends the message (counted refused by the publisher).
    client, _ = _client_holding([(2, S.MQTT_MS_WAIT_FOR_PUBREC, False)])
    refused: list[int] = []
    client.publisher.on_refused = lambda mid, reason: refused.append(mid)  # type: ignore[attr-defined]
    client._inflight_messages = 1
    client._in_packet["packet"] = b"\x00\x01\x87"
    client._handle_pubrec()
    assert refused == [1] and client._out_messages == {}
