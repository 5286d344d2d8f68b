"""The `mqtt:` section of the configuration: where and how the mirror publishes.

    mqtt:
      broker: "mqtt.example.net:8883"       # TLS only (section 6.4); IPv6 as "[2001:db8::1]:8883"
      client_id: concentrator-01
      tls: {ca_file: ..., cert_file: ..., key_file: ...}   # broker's CA, our X.509 pair
      credentials_file: /etc/concentrator/mqtt.cred        # one line "username:password"
      prefix: holder/concentrator           # topics: <prefix>/<area>/<site>/<ca>/<ioa>
      default_area: default
      areas: {site-01: north}               # site name -> area
      critical: {site-01: [1001]}           # measurements published at QoS 2
      time_zones: {site-01: Europe/Rome}    # zone of the site's CP56Time2a tags (default UTC)
      queue_limit: 10000                    # ASDUs waiting for the broker at most
      keepalive: 30

Assembled into the whole file's `Config` by concentrator/config.py; errors name file and key.
Secrets stay in their own file (mode 0600 recommended), so the YAML can be shared.
"""

from __future__ import annotations

import datetime
import os
import re
import zoneinfo
from collections.abc import Collection
from dataclasses import dataclass, field

from concentrator.configbase import MISSING, ConfigError, Endpoint, endpoint, in_file, integer, mapping

_KEYS = ("broker", "client_id", "tls", "credentials_file", "prefix", "default_area", "areas", "critical",
         "time_zones", "queue_limit", "keepalive")  # fmt: skip
_TLS_KEYS = ("ca_file", "cert_file", "key_file")
_LEVEL = re.compile(r"[A-Za-z0-9_.-]+")  # one topic level: no wildcards, no '/', no '$'


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class MqttConfig:
    broker: Endpoint
    client_id: str
    tls: TlsFiles
    credentials_file: str
    username: str
    password: str = field(repr=False)
    prefix: str
    default_area: str
    areas: dict[str, str]
    critical: dict[str, frozenset[int]]
    time_zones: dict[str, str] = field(default_factory=dict)  # site -> IANA zone name
    # Certificates not valid now (tlsfiles.py): check-config warns, the relay logs them.
    tls_dates: tuple[str, ...] = ()
    queue_limit: int = 10_000
    keepalive: int = 30

    def area(self, site: str) -> str:
        return self.areas.get(site, self.default_area)

    def time_zone(self, site: str) -> datetime.tzinfo:
        name = self.time_zones.get(site)
        return datetime.UTC if name is None else zoneinfo.ZoneInfo(name)

    def is_critical(self, site: str, ioa: int) -> bool:
        points = self.critical.get(site)
        return points is not None and ioa in points


def parse_mqtt(value: object, file: str, sites: Collection[str]) -> MqttConfig:
    with in_file(file):  # the shared value checks raise Invalid, which knows no file
        return _parse_mqtt(value, file, sites)


def _parse_mqtt(value: object, file: str, sites: Collection[str]) -> MqttConfig:
    def fail(key: str, expected: str, got: object = MISSING) -> ConfigError:
        return ConfigError(file, key, expected, got)

    def readable_file(v: object, key: str) -> str:
        if v is MISSING:
            raise fail(key, "the path of a readable file")
        if not isinstance(v, str) or not os.path.isfile(v) or not os.access(v, os.R_OK):
            raise fail(key, "the path of a readable file", v)
        return v

    def level(v: object, key: str) -> str:
        if not isinstance(v, str) or not _LEVEL.fullmatch(v):
            raise fail(key, "one topic level of letters, digits, '_', '.', '-'", v)
        return v

    def site_name(v: object, key: str) -> str:
        if v not in sites:
            raise fail(key, "the name of a site in sites", v)
        assert isinstance(v, str)
        return v

    m = mapping(value, "mqtt", _KEYS)

    broker = endpoint(m.get("broker", MISSING), "mqtt.broker", ip_only=False)

    client_id = level(m.get("client_id", "concentrator"), "mqtt.client_id")

    tls_map = mapping(m.get("tls", MISSING), "mqtt.tls", _TLS_KEYS)
    tls = TlsFiles(*(readable_file(tls_map.get(k, MISSING), f"mqtt.tls.{k}") for k in _TLS_KEYS))
    tls_dates: list[str] = []
    try:
        from .tlsfiles import check_tls_files
    except ImportError:  # no cryptography (the mqtt extra): check-config names what to install
        problems = []
    else:
        problems = check_tls_files(tls.ca_file, tls.cert_file, tls.key_file, datetime.datetime.now(datetime.UTC))
    for problem in problems:
        if not problem.dated:
            raise fail(f"mqtt.tls.{problem.key}", problem.expected, problem.got)
        tls_dates.append(f"mqtt.tls.{problem.key}: expected {problem.expected}, got {problem.got}")

    credentials_file = readable_file(m.get("credentials_file", MISSING), "mqtt.credentials_file")
    with open(credentials_file, encoding="utf-8") as f:
        line = f.readline().rstrip("\r\n")
    username, colon, password = line.partition(":")
    if not colon or not username or not password:
        # Never echo the line: it holds the password.
        raise fail("mqtt.credentials_file", 'a first line "username:password"', "(a line without both)")

    prefix = m.get("prefix", MISSING)
    if not isinstance(prefix, str) or not all(_LEVEL.fullmatch(p) for p in prefix.split("/")):
        raise fail(
            "mqtt.prefix", "topic levels separated by '/', without wildcards, as \"holder/concentrator\"", prefix
        )

    default_area = level(m.get("default_area", "default"), "mqtt.default_area")

    areas_value = m.get("areas", {})
    if not isinstance(areas_value, dict):
        raise fail("mqtt.areas", "a mapping of site name to area", areas_value)
    areas = {site_name(k, f"mqtt.areas.{k}"): level(v, f"mqtt.areas.{k}") for k, v in areas_value.items()}

    critical_value = m.get("critical", {})
    if not isinstance(critical_value, dict):
        raise fail("mqtt.critical", "a mapping of site name to a list of IOAs", critical_value)
    critical: dict[str, frozenset[int]] = {}
    for k, v in critical_value.items():
        site = site_name(k, f"mqtt.critical.{k}")
        if not isinstance(v, list) or not v:
            raise fail(f"mqtt.critical.{k}", "a non-empty list of IOAs", v)
        critical[site] = frozenset(integer(x, f"mqtt.critical.{k}[{i}]", 0, 0xFFFFFF) for i, x in enumerate(v))

    zones_value = m.get("time_zones", {})
    if not isinstance(zones_value, dict):
        raise fail("mqtt.time_zones", "a mapping of site name to an IANA time zone", zones_value)
    time_zones = {}
    for k, v in zones_value.items():
        site = site_name(k, f"mqtt.time_zones.{k}")
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise fail(f"mqtt.time_zones.{k}", 'an IANA time zone name, as "Europe/Rome" or "UTC"', v) from None
        time_zones[site] = v

    return MqttConfig(
        broker=broker,
        client_id=client_id,
        tls=tls,
        credentials_file=credentials_file,
        username=username,
        password=password,
        prefix=prefix,
        default_area=default_area,
        areas=areas,
        critical=critical,
        time_zones=time_zones,
        tls_dates=tuple(tls_dates),
        queue_limit=integer(m.get("queue_limit", 10_000), "mqtt.queue_limit", 1, 10_000_000),
        keepalive=integer(m.get("keepalive", 30), "mqtt.keepalive", 5, 3600),
    )
