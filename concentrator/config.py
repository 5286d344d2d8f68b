"""Configuration: load and validate the concentrator's local YAML file.

The file is the only way to configure the appliance (no network interface changes it).
Every problem is reported as a `ConfigError` naming the file, the key path
(`uplink.listen`, `sites[3].endpoints[1]`) and what was expected there. Unknown keys
are errors, so that a typo cannot pass silently, and so are keys given twice.

Layers (README, Architecture): the primitives (errors, the bounded YAML loader, value
checks) are in concentrator/configbase.py; each section has one parser, written by its
owner: the relay's `uplink:`, `sites:` and `metrics:` in concentrator/relay/config.py, `network:` and `multicast:`
in netconfig/ (the link manager reads them alone, without the relay), `mqtt:` in
concentrator/mirror/config.py. This module assembles the whole file's `Config` from them.

The relay's sections have one parser each in `relay.config.SECTIONS`; adding one means
writing its parser, adding it there and adding the matching field to `Config`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from concentrator.configbase import (
    MISSING,
    ConfigError,
    Endpoint,
    in_file,
    mapping,
    read_yaml,
)
from concentrator.ha.config import HaConfig, check_against_relay, parse_ha
from concentrator.incidents.config import IncidentsConfig, parse_incidents
from concentrator.mirror.config import MqttConfig, parse_mqtt
from concentrator.relay.config import (
    INTERRUPTIBILITY,
    SECTIONS,
    MetricsConfig,
    SiteConfig,
    UplinkConfig,
    check_sections,
)
from concentrator.shedding.config import SheddingConfig, parse_shedding
from netconfig.config import NetworkConfig, parse_network
from netconfig.trip.config import MulticastConfig, parse_multicast

__all__ = [
    "ConfigError",
    "Endpoint",
    "UplinkConfig",
    "SiteConfig",
    "MetricsConfig",
    "Config",
    "load_config",
    "parse_config",
    "INTERRUPTIBILITY",
]


@dataclass(frozen=True)
class Config:
    file: str
    sha256: str
    mtime: float
    uplink: UplinkConfig
    sites: tuple[SiteConfig, ...]
    metrics: MetricsConfig
    network: NetworkConfig | None = None  # the link manager's section, if present
    multicast: MulticastConfig | None = None  # the trip path (also the link manager's), if present
    mqtt: MqttConfig | None = None  # the telemetry mirror (concentrator/mirror), if present
    shedding: SheddingConfig | None = None  # the shedding compliance monitor (concentrator/shedding), if present
    ha: HaConfig | None = None  # a redundant pair under keepalived (concentrator/ha/config.py), if present
    incidents: IncidentsConfig | None = None  # the incident register (concentrator/incidents), if present
    _by_ca: dict[int, SiteConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_ca = {ca: site for site in self.sites for ca in site.common_addresses}
        object.__setattr__(self, "_by_ca", by_ca)

    def site_for(self, common_address: int) -> SiteConfig | None:
        """The site owning `common_address`; None if unknown (and for broadcast)."""
        return self._by_ca.get(common_address)

    def listeners(self) -> list[tuple[str, Endpoint]]:
        """Every address the appliance's processes listen on, with its key: the relay's
        uplink and metrics, the link manager's, the shedding monitor's and the HA supervisor's."""
        found = [("uplink.listen", self.uplink.listen), ("metrics.listen", self.metrics.listen)]
        if self.network is not None and self.network.metrics_listen is not None:
            found.append(("network.metrics_listen", self.network.metrics_listen))
        if self.shedding is not None:
            found.append(("shedding.metrics_listen", self.shedding.metrics_listen))
        if self.ha is not None:
            found.append(("ha.metrics_listen", self.ha.metrics_listen))
        if self.incidents is not None:
            found.append(("incidents.metrics_listen", self.incidents.metrics_listen))
        return found


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML file at `path`."""
    file = os.fspath(path)
    data, raw, mtime = read_yaml(file)
    return parse_config(data, file, sha256=hashlib.sha256(raw).hexdigest(), mtime=mtime)


def parse_config(data: object, file: str, *, sha256: str = "", mtime: float = 0.0) -> Config:
    """Validate an already-loaded document (a mapping) and build the `Config`."""
    with in_file(file):
        top = mapping(data, "", [*SECTIONS, *_OWN_SECTIONS])
        sections = {name: parse(top.get(name, MISSING), name) for name, parse in SECTIONS.items()}
        check_sections(sections["uplink"], sections["sites"], sections["metrics"])
    net = None if top.get("network", MISSING) is MISSING else parse_network(top["network"], file)
    multicast = None
    if top.get("multicast", MISSING) is not MISSING:
        multicast = parse_multicast(top["multicast"], file, net)
    mqtt = None
    if top.get("mqtt", MISSING) is not MISSING:
        mqtt = parse_mqtt(top["mqtt"], file, {site.name for site in sections["sites"]})
    shedding = None
    if top.get("shedding", MISSING) is not MISSING:
        shedding = parse_shedding(top["shedding"], file, sections["sites"])
    ha = None
    if top.get("ha", MISSING) is not MISSING:
        ha = parse_ha(top["ha"], file)
        check_against_relay(ha, sections["uplink"].listen.host, file, None if net is None else net.service_address)
    incidents = None
    if top.get("incidents", MISSING) is not MISSING:
        incidents = parse_incidents(top["incidents"], file, sections["sites"])
    return Config(
        file=file,
        sha256=sha256,
        mtime=mtime,
        network=net,
        multicast=multicast,
        mqtt=mqtt,
        shedding=shedding,
        ha=ha,
        incidents=incidents,
        **sections,
    )


# Sections whose parsers report errors themselves (they need the file name).
_OWN_SECTIONS = ("network", "multicast", "mqtt", "shedding", "ha", "incidents")
