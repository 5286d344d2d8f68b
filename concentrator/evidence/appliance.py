"""What the evidence reads of the configuration: the file itself and every section that
describes the appliance (the dossier documents all of it). The whole file's `Config`
(concentrator/config.py) is one; the wiring layer (concentrator/cli.py) loads it and
hands its loader to `concentrator evidence`, so that this package imports no other
feature (tests/unit/test_imports.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from concentrator.configbase import Endpoint
from concentrator.relay.config import MetricsConfig, SiteConfig, UplinkConfig
from netconfig.config import NetworkConfig
from netconfig.trip.config import MulticastConfig


class Accepted(Protocol):
    """A configuration file as accepted by check-config or a relay start (history.py)."""

    @property
    def file(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def mtime(self) -> float: ...


class Mirror(Protocol):
    """What the dossier says of the MQTT mirror's section."""

    @property
    def broker(self) -> Endpoint: ...

    @property
    def prefix(self) -> str: ...


class Appliance(Accepted, Protocol):
    @property
    def uplink(self) -> UplinkConfig: ...

    @property
    def sites(self) -> tuple[SiteConfig, ...]: ...

    @property
    def metrics(self) -> MetricsConfig: ...

    @property
    def mqtt(self) -> Mirror | None: ...

    @property
    def network(self) -> NetworkConfig | None: ...

    @property
    def multicast(self) -> MulticastConfig | None: ...


Load = Callable[[str], Appliance]
