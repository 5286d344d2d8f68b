"""What the mirror publishes: one JSON message per information object, its topic and
its QoS (docs/mqtt.md; the operator's specification for distributed generation data
over MQTT, sections 6.1-6.3), and the retained status messages.

Pure functions of the configuration and the ASDU: no I/O.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from concentrator.iec104.asdu import AsduHeader
from concentrator.iec104.decode import CYCLIC_KINDS, DecodedAsdu, DecodeError, decode_asdu

from .config import MqttConfig


def topic(config: MqttConfig, site: str, common_address: int, ioa: int) -> str:
    return f"{config.prefix}/{config.area(site)}/{site}/{common_address}/{ioa}"


def mirror_status_topic(config: MqttConfig) -> str:
    """Retained: online / offline (also our last will)."""
    return f"{config.prefix}/status"


def site_status_topic(config: MqttConfig, site: str) -> str:
    """Retained: online / site down / uplink not started, per site."""
    return f"{config.prefix}/{config.area(site)}/{site}/status"


def iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def messages(config: MqttConfig, asdu: bytes, site: str, received: float) -> tuple[list[tuple[str, bytes, int]], bool]:
    """(topic, JSON payload, QoS) per information object, and whether decoding failed
    (then one QoS 2 message carries the raw ASDU: any type the decoder does not know is
    still mirrored). `received`: when the relay read the ASDU (Unix time)."""
    header = AsduHeader.parse(asdu)
    received_at = datetime.datetime.fromtimestamp(received, datetime.UTC)
    common: dict[str, Any] = {
        "site": site,
        "area": config.area(site),
        "common_address": header.common_address,
        "type_id": header.type_id,
        "cause": header.cause,
        "negative": header.negative,
        "test": header.test,
        "originator": header.originator,
        "received": iso(received),
    }
    try:
        decoded: DecodedAsdu = decode_asdu(asdu)
    except DecodeError:
        ioa = int.from_bytes(asdu[6:9], "little") if len(asdu) >= 9 else 0
        payload = {**common, "ioaddress": ioa, "value": None, "asdu": asdu.hex()}
        return [(topic(config, site, header.common_address, ioa), _json(payload), 2)], True
    zone = config.time_zone(site)
    out = []
    for obj in decoded.objects:
        quality = obj.quality
        tag = obj.time
        payload = {
            **common,
            "type": decoded.type_name,
            "ioaddress": obj.address,
            "value": obj.value,
            # Only the quality bits; a bit the type does not have reads false.
            "quality": None
            if quality is None
            else {
                "raw": quality.raw,
                "iv": quality.iv,
                "nt": quality.nt,
                "sb": quality.sb,
                "bl": quality.bl,
                "ov": quality.ov,
                "ei": quality.ei,
            },  # fmt: skip
            # CP56Time2a in the site's zone (SU bit honoured), CP24Time2a resolved
            # against `received`; the octets as sent are kept as well.
            "timetag": None if tag is None else tag.isoformat(zone, received_at),
            "timetag_invalid": None if tag is None else tag.invalid,
            "timetag_summer": None if tag is None or tag.year is None else tag.summer,
            "timetag_raw": None if tag is None else tag.raw.hex(),
        }
        if obj.extra:
            payload.update(obj.extra)
        critical = config.is_critical(site, obj.address)
        qos = 0 if decoded.kind in CYCLIC_KINDS and not critical else 2  # section 6.3
        out.append((topic(config, site, header.common_address, obj.address), _json(payload), qos))
    return out, False


def _json(payload: dict[str, Any]) -> bytes:
    # NaN/inf floats (a device can send them) would make invalid JSON: send them as text.
    value = payload.get("value")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        payload["value"] = str(value)
    return json.dumps(payload, separators=(",", ":")).encode()
