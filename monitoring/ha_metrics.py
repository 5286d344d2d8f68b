"""Metrics of the HA supervisor (`concentrator ha`), served on `ha.metrics_listen`:

    concentrator_ha_active{node}                      1 while this appliance's relay runs
    concentrator_ha_role{node,role}                   1 for the current role: active,
                                                      standby, fenced, fault
    concentrator_ha_transitions_total{node,role}      times each role was entered
    concentrator_ha_last_takeover_seconds{node}       last promotion: keepalived's MASTER
                                                      to the relay listening
    concentrator_ha_fenced_total{node}                promotions refused: the peer's relay
                                                      was active (VRRP lost on both paths)
    concentrator_ha_relay_crashes_total{node}         relay exits while active (restarted)
    concentrator_ha_keepalived_up{node}               1 while keepalived runs
    concentrator_ha_relay_ready{node}                 1 while a relay is loaded (standing
                                                      by for a promotion, or running)

The VRRP detection before MASTER (3 adverts + skew) is not in the takeover figure;
docs/ha.md gives both. Alert rules: monitoring/alerts.yml (group concentrator-ha).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from concentrator.ha.state import HaState

PREFIX = "concentrator_ha_"
ROLES = ("active", "standby", "fenced", "fault")  # concentrator.ha.state.Role's values


def _one(family: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: float) -> Metric:
    family.add_metric(labels, value)
    return family


class HaCollector(Collector):
    def __init__(self, state: HaState) -> None:
        self.state = state

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s, node = self.state, [self.state.node]
        active = GaugeMetricFamily(f"{PREFIX}active", "1 while this appliance's relay runs.", labels=["node"])
        yield _one(active, node, 1 if s.role.value == "active" else 0)
        role = GaugeMetricFamily(f"{PREFIX}role", "1 for this appliance's current role.", labels=["node", "role"])
        transitions = CounterMetricFamily(
            f"{PREFIX}transitions", "Times each role was entered.", labels=["node", "role"]
        )
        for name in ROLES:
            role.add_metric([s.node, name], 1 if s.role.value == name else 0)
            transitions.add_metric([s.node, name], s.transitions.get(name, 0))
        yield role
        yield transitions
        takeover = GaugeMetricFamily(
            f"{PREFIX}last_takeover_seconds",
            "Last promotion: from keepalived's MASTER to the relay listening on the uplink's virtual address.",
            labels=["node"],
        )
        if s.last_takeover_seconds is not None:
            takeover.add_metric(node, s.last_takeover_seconds)
        yield takeover
        yield _one(
            CounterMetricFamily(
                f"{PREFIX}fenced", "Promotions refused because the peer's relay was active.", labels=["node"]
            ),
            node,
            s.fenced,
        )
        yield _one(
            CounterMetricFamily(f"{PREFIX}relay_crashes", "Relay exits while active (restarted).", labels=["node"]),
            node,
            s.relay_exits,
        )
        yield _one(
            GaugeMetricFamily(f"{PREFIX}keepalived_up", "1 while keepalived runs.", labels=["node"]),
            node,
            1 if s.keepalived_up else 0,
        )
        yield _one(
            GaugeMetricFamily(
                f"{PREFIX}relay_ready", "1 while a relay is loaded (standing by or running).", labels=["node"]
            ),
            node,
            1 if s.relay_ready else 0,
        )
