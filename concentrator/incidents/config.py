"""The `incidents:` section: the incident register's detection thresholds, store, spool
and SMTP relay (annex A40 5.7.1-5.7.3; docs/incidents.md).

    incidents:
      database: /var/lib/concentrator/incidents.sqlite   # SQLite, WAL, one writer
      spool: /var/lib/concentrator/notices               # .eml and .txt of every notice
      metrics_listen: "127.0.0.1:9108"
      netd_state: /run/concentrator/netd.json            # netd's state file (both paths down)
      holder: "Acme S.p.A."                               # who signs the notices
      unreachable_grace: 20        # s; annex A40 footnote 2: disconnections under 20 s are tolerated
      measure_grace: 20            # s of measures invalid or missing before an incident
      skew_grace: 30               # s of time tags over the limit (with fresh evidence) before an incident
      bmi_grace: 20                # s without a started BMI connection; null: not watched
      recovery_hold: 10            # s a cause must stay gone before its incident is restored (flapping merged)
      closing: confirm             # confirm: closing notice on `incidents close`; automatic: at once
      smtp:                         # optional: without it notices stay in the spool for the holder
        host: smtp.example.com
        port: 587
        starttls: true
        ca_file: /etc/concentrator/smtp-ca.pem          # optional; the system's CAs otherwise
        username: concentrator                           # optional, with password_file
        password_file: /etc/concentrator/smtp-password
        from: concentrator@holder.example
        to: [interrompibili@operator.example, oncall@holder.example]
        retry_min: 30              # s; doubled after each failure up to retry_max
        retry_max: 900
      sites:                        # optional per-site settings
        site-01: {updc: "UPDC ABB RTU560 #1", measures: [1001, 1002], skew_limit: 0.005}

A site's skew limit defaults to 5 ms for instantaneous interruptibility (5.4) and to no
limit (not watched) for emergency. `measures` lists the IOAs whose quality and presence
are watched; empty (the default): every measured value the site sends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from concentrator.configbase import Endpoint, Invalid, endpoint, in_file, integer, items, mapping, seconds

_KEYS = ("database", "spool", "metrics_listen", "netd_state", "holder", "unreachable_grace", "measure_grace",
         "skew_grace", "bmi_grace", "recovery_hold", "closing", "smtp", "sites", "queue_limit")  # fmt: skip
_SMTP_KEYS = ("host", "port", "starttls", "ca_file", "username", "password_file", "from", "to", "retry_min",
              "retry_max", "timeout")  # fmt: skip
_SITE_KEYS = ("updc", "measures", "skew_limit")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9108"
INSTANTANEOUS_SKEW = 0.005  # s, annex A40 5.4
MAX_IOA = 0xFFFFFF


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: bool
    sender: str
    recipients: tuple[str, ...]
    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    retry_min: float = 30.0
    retry_max: float = 900.0
    timeout: float = 30.0


@dataclass(frozen=True)
class IncidentSite:
    name: str
    updc: str  # the UPDC's name in the notices (5.7.1 ii); the site's name if not given
    measures: frozenset[int]  # watched IOAs; empty: every measured value
    skew_limit: float | None  # seconds; None: skew not watched


@dataclass(frozen=True)
class IncidentsConfig:
    database: str
    spool: str
    metrics_listen: Endpoint
    sites: tuple[IncidentSite, ...]
    netd_state: str | None = None
    holder: str = ""
    unreachable_grace: float = 20.0
    measure_grace: float = 20.0
    skew_grace: float = 30.0
    bmi_grace: float | None = 20.0
    recovery_hold: float = 10.0
    automatic_closing: bool = False
    smtp: SmtpConfig | None = None
    queue_limit: int = 20_000
    _by_name: dict[str, IncidentSite] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.sites})

    def site(self, name: str) -> IncidentSite | None:
        return self._by_name.get(name)


class _Site(Protocol):
    """What this section needs of a site of `sites:` (concentrator.config.SiteConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def interruptibility(self) -> str: ...


def parse_incidents(value: object, file: str, sites: Sequence[_Site]) -> IncidentsConfig:
    with in_file(file):
        return _parse(value, sites)


def _path(value: object, key: str, expected: str) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(key, expected, value)
    return value


def _text(value: object, key: str, expected: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise Invalid(key, expected, value)
    return value


def _parse(value: object, sites: Sequence[_Site]) -> IncidentsConfig:
    top = mapping(value, "incidents", _KEYS, required=("database", "spool"))
    database = _path(top["database"], "incidents.database", "the path of the incident register (SQLite)")
    spool = _path(top["spool"], "incidents.spool", "the directory the notices are written to")
    listen = endpoint(top.get("metrics_listen", DEFAULT_METRICS_LISTEN), "incidents.metrics_listen", ip_only=True)
    netd_state = top.get("netd_state")
    if netd_state is not None:
        netd_state = _path(netd_state, "incidents.netd_state", "the path of netd's state file (netd --state)")
    holder = top.get("holder", "")
    if not isinstance(holder, str):
        raise Invalid("incidents.holder", "the holder's name as text (it signs the notices)", holder)

    def grace(key: str, default: float, low: float) -> float:
        return seconds(top.get(key, default), f"incidents.{key}", low)

    bmi = top.get("bmi_grace", 20.0)
    closing = top.get("closing", "confirm")
    if closing not in ("confirm", "automatic"):
        raise Invalid("incidents.closing", "confirm (closing notice on `incidents close`) or automatic", closing)
    by_name = {s.name: s for s in sites}
    listed = mapping(top.get("sites", {}), "incidents.sites", list(by_name),
                     expected="a mapping of site names (from sites:) to their settings")  # fmt: skip
    result = []
    for site in sites:
        key = f"incidents.sites.{site.name}"
        m = mapping(listed.get(site.name, {}), key, _SITE_KEYS)
        updc = _text(m.get("updc", site.name), f"{key}.updc", "the UPDC's name, 1 to 200 characters")
        expected = f"an information object address from 1 to {MAX_IOA}"
        listed_ioas = items(m["measures"], f"{key}.measures", "a non-empty list of IOAs") if "measures" in m else []
        measures = frozenset(
            integer(v, f"{key}.measures[{i}]", 1, MAX_IOA, expected=expected) for i, v in enumerate(listed_ioas)
        )
        default_skew = INSTANTANEOUS_SKEW if site.interruptibility == "instantaneous" else None
        skew = m.get("skew_limit", default_skew)
        if skew is not None:
            skew = seconds(skew, f"{key}.skew_limit", 0.0001)
        result.append(IncidentSite(site.name, updc, measures, skew))
    return IncidentsConfig(
        database=database,
        spool=spool,
        metrics_listen=listen,
        sites=tuple(result),
        netd_state=netd_state,
        holder=holder,
        unreachable_grace=grace("unreachable_grace", 20.0, 0.0),
        measure_grace=grace("measure_grace", 20.0, 0.0),
        skew_grace=grace("skew_grace", 30.0, 0.0),
        bmi_grace=None if bmi is None else seconds(bmi, "incidents.bmi_grace", 0.0),
        recovery_hold=grace("recovery_hold", 10.0, 0.0),
        automatic_closing=closing == "automatic",
        smtp=None if top.get("smtp") is None else _parse_smtp(top["smtp"]),
        queue_limit=integer(top.get("queue_limit", 20_000), "incidents.queue_limit", 100, 10_000_000),
    )


def _parse_smtp(value: object) -> SmtpConfig:
    m = mapping(value, "incidents.smtp", _SMTP_KEYS, required=("host", "from", "to"))
    host = _text(m["host"], "incidents.smtp.host", "the SMTP relay's host name or address")
    port = integer(m.get("port", 587), "incidents.smtp.port", 1, 65535)
    starttls = m.get("starttls", True)
    if not isinstance(starttls, bool):
        raise Invalid("incidents.smtp.starttls", "true (STARTTLS before sending) or false", starttls)
    sender = _address(m["from"], "incidents.smtp.from")
    to = items(m["to"], "incidents.smtp.to", "a non-empty list of e-mail addresses")
    if not to:
        raise Invalid("incidents.smtp.to", "a non-empty list of e-mail addresses", to)
    recipients = tuple(_address(v, f"incidents.smtp.to[{i}]") for i, v in enumerate(to))
    ca_file = m.get("ca_file")
    if ca_file is not None and not (isinstance(ca_file, str) and os.path.isfile(ca_file)):
        raise Invalid("incidents.smtp.ca_file", "a readable file of CA certificates (PEM)", ca_file)
    username, password_file = m.get("username"), m.get("password_file")
    if (username is None) != (password_file is None):
        raise Invalid("incidents.smtp.password_file", "username and password_file together, or neither", password_file)
    if password_file is not None and not (isinstance(password_file, str) and os.path.isfile(password_file)):
        raise Invalid("incidents.smtp.password_file", "a readable file holding the SMTP password", password_file)
    if username is not None:
        username = _text(username, "incidents.smtp.username", "the SMTP user name")
    retry_min = seconds(m.get("retry_min", 30.0), "incidents.smtp.retry_min", 0.1)
    retry_max = seconds(m.get("retry_max", 900.0), "incidents.smtp.retry_max", retry_min)
    timeout = seconds(m.get("timeout", 30.0), "incidents.smtp.timeout", 0.1)
    return SmtpConfig(host, port, starttls, sender, recipients, ca_file, username, password_file, retry_min,
                      retry_max, timeout)  # fmt: skip


def _address(value: object, key: str) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or any(c.isspace() for c in value) or len(value) > 254:
        raise Invalid(key, "an e-mail address (user@domain)", value)
    return value
