"""The link manager's glue: decisions become route changes, counters and state, no network."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from netconfig.config import LinkConfig, PathConfig, parse_network
from netconfig.failover import Role
from netconfig.netd import LinkController, LinkStats, NetdStats, _LinkMsg, _ProbeMsg, _StateWriter
from netconfig.netlink import LinkState

RAW = {
    "service_address": "10.0.0.1",
    "hold_time": 2,
    "uplink": {
        "destinations": ["10.0.1.0/24"],
        "primary": {"interface": "up0", "gateway": "172.16.0.2"},
        "backup": {"interface": "up1", "gateway": "172.16.1.2", "probe_target": "10.9.9.9"},
    },
}


class FakeRoutes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def apply(self, link: LinkConfig, path: PathConfig) -> float:
        self.calls.append(("active", path.interface))
        return 0.001

    def apply_standby(self, link: LinkConfig, path: PathConfig) -> None:
        self.calls.append(("standby", path.interface))

    def apply_probe_route(self, path: PathConfig) -> None:
        self.calls.append(("probe", path.interface))


def make(initial: dict[str, bool]) -> tuple[LinkController, FakeRoutes, LinkStats, list[int]]:
    cfg = parse_network(RAW, "t.yaml")
    assert cfg.uplink is not None
    routes = FakeRoutes()
    stats = LinkStats("uplink")
    changes: list[int] = []
    states = {name: LinkState(name, i, up) for i, (name, up) in enumerate(initial.items())}
    ctl = LinkController(cfg.uplink, cfg, routes, stats, states, lambda: changes.append(1))  # type: ignore[arg-type]
    return ctl, routes, stats, changes


async def test_start_installs_active_and_standby_routes() -> None:
    ctl, routes, stats, _ = make({"up0": True, "up1": True})
    ctl.start()
    assert ("active", "up0") in routes.calls and ("standby", "up1") in routes.calls
    assert ("probe", "up0") in routes.calls and ("probe", "up1") in routes.calls
    assert stats.active == "primary" and stats.healthy == {"primary": True, "backup": True}


async def test_carrier_loss_moves_routes_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    ctl, routes, stats, changes = make({"up0": True, "up1": True})
    ctl.start()
    routes.calls.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctl.run)
        ctl.send.send_nowait(_LinkMsg(Role.PRIMARY, False))
        await trio.sleep(0.01)
        assert routes.calls == [("active", "up1")]  # standby via up0 skipped: it is down
        assert stats.active == "backup" and stats.switches_total == 1
        assert stats.switches_by_reason == {"carrier-down": 1}
        assert stats.recent_switches[-1].reason == "carrier-down"
        assert changes
        # Primary back: its probe route and the standby route are re-installed at once,
        # traffic returns only after a probe answer and the hold time (2 s).
        routes.calls.clear()
        ctl.send.send_nowait(_LinkMsg(Role.PRIMARY, True))
        await trio.sleep(0.01)
        assert routes.calls == [("probe", "up0"), ("standby", "up0")]
        ctl.send.send_nowait(_ProbeMsg(Role.PRIMARY, True, trio.current_time()))
        await trio.sleep(1.9)
        assert stats.active == "backup"
        await trio.sleep(0.2)
        assert stats.active == "primary"
        assert stats.switches_by_reason == {"carrier-down": 1, "hold-elapsed": 1}
        assert ("active", "up0") in routes.calls
        nursery.cancel_scope.cancel()


async def test_probe_misses_are_counted_and_switch(autojump_clock: trio.testing.MockClock) -> None:
    ctl, routes, stats, _ = make({"up0": True, "up1": True})
    ctl.start()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctl.run)
        ctl.send.send_nowait(_ProbeMsg(Role.PRIMARY, True, trio.current_time()))
        for _ in range(3):
            await trio.sleep(0.1)
            ctl.send.send_nowait(_ProbeMsg(Role.PRIMARY, False, trio.current_time()))
        await trio.sleep(0.01)
        assert stats.probe_misses_total["primary"] == 3
        assert stats.active == "backup"
        assert stats.outage_seconds_last is not None and abs(stats.outage_seconds_last - 0.3) < 1e-6
        nursery.cancel_scope.cancel()


def test_state_file_is_json(tmp_path: Any) -> None:
    stats = NetdStats()
    stats.links["uplink"] = LinkStats("uplink")
    path = tmp_path / "state.json"
    _StateWriter(str(path), stats).write()
    data = json.loads(path.read_text())
    assert data["links"]["uplink"]["active"] == "primary"
    assert data["links"]["uplink"]["recent_switches"] == []
