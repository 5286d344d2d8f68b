"""The link manager process: `concentrator netd --config FILE`.

Runs apart from the relay so that failover never depends on the relay being alive.
For each protected link (the uplink, each site) one `Failover` decision object is
fed by the netlink monitor (carrier events, ~5 ms) and by one ICMP probe per path
(silent failures); each `Switched` decision re-points the link's routes with
pyroute2, keeping the service address as source. With a `multicast:` section it also
runs the trip path, on the engine this kernel offers (netconfig.trip.capability, said once at
start; a refused engine is one ERROR line and link failover runs without it).

Operator interface (local only, like the configuration):
    SIGUSR1          manual fail-back to the primary on every link where it is healthy
    SIGTERM/SIGINT   exit; routes are left in place so traffic keeps flowing
    --state FILE     JSON snapshot of `NetdStats`, rewritten on every change
                     (for the metrics exporter and the failover harness)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import trio

from concentrator.configbase import MISSING, ConfigError, read_yaml, run_main
from monitoring.linkmanager import LinkManagerCollector, outage_histogram
from monitoring.primitives import Histogram, serve

from .config import LinkConfig, NetworkConfig, PathConfig, parse_network
from .failover import (
    AllPathsDown,
    Event,
    FailbackRefused,
    Failover,
    PathDown,
    PathUp,
    Role,
    Switched,
)
from .netlink import LinkMonitor, LinkState, current_links
from .probe import run_probe
from .routes import RouteError, Routes
from .sdnotify import notify, watchdog_period
from .trip.capability import probe, resolve
from .trip.config import SMCROUTE, MulticastConfig, parse_multicast_section
from .trip.nftables import NftTripPath
from .trip.smcroute import TripPath, TripState

log = logging.getLogger("netd")


# ---------------------------------------------------------------------- counters


@dataclass
class SwitchInfo:
    """One switch, as kept for metrics and the harness."""

    wall_time: float  # time.time() of the switch
    frm: str
    to: str
    reason: str
    outage_seconds: float | None
    detection_seconds: float | None
    route_seconds: float  # time pyroute2 took to replace the routes


@dataclass
class LinkStats:
    """Plain counters for one protected link, read by the metrics exporter."""

    name: str
    active: str = "primary"
    all_down: bool = False
    healthy: dict[str, bool] = field(default_factory=lambda: {"primary": False, "backup": False})
    switches_total: int = 0
    switches_by_reason: dict[str, int] = field(default_factory=dict)
    outage_seconds_total: float = 0.0  # sum of the outages of failure-driven switches
    outage_seconds_last: float | None = None
    all_down_total: int = 0
    probe_misses_total: dict[str, int] = field(default_factory=lambda: {"primary": 0, "backup": 0})
    probe_answers_total: dict[str, int] = field(default_factory=lambda: {"primary": 0, "backup": 0})
    route_errors_total: int = 0
    outage: Histogram = field(default_factory=outage_histogram)  # of failure-driven switches
    recent_switches: deque[SwitchInfo] = field(default_factory=lambda: deque(maxlen=100))


@dataclass
class NetdStats:
    started: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    ready: bool = False
    links: dict[str, LinkStats] = field(default_factory=dict)
    trip: TripState | None = None  # with a multicast: section

    def to_json(self) -> dict[str, Any]:
        links = {}
        for name, link in self.links.items():
            d = {k: v for k, v in vars(link).items() if k not in ("recent_switches", "outage")}
            d["recent_switches"] = [asdict(s) for s in link.recent_switches]
            d["outage"] = asdict(link.outage)
            links[name] = d
        doc = {"started": self.started, "pid": self.pid, "ready": self.ready, "links": links}
        if self.trip is not None:
            doc["trip"] = self.trip.to_json()
        return doc


# ---------------------------------------------------------------------- one link


@dataclass(frozen=True, slots=True)
class _LinkMsg:
    role: Role
    usable: bool


@dataclass(frozen=True, slots=True)
class _ProbeMsg:
    role: Role
    answered: bool
    at: float


class _Failback:
    pass


_Msg = _LinkMsg | _ProbeMsg | _Failback


class LinkController:
    """Owns one Failover object; the only task that touches it."""

    def __init__(
        self,
        link: LinkConfig,
        cfg: NetworkConfig,
        routes: Routes,
        stats: LinkStats,
        initial: dict[str, LinkState],
        on_change: Any,
        resume: Role | None = None,
    ) -> None:
        self.link = link
        self.routes = routes
        self.stats = stats
        self._on_change = on_change
        self._usable = {
            Role.PRIMARY: _usable(initial, link.primary.interface),
            Role.BACKUP: _usable(initial, link.backup.interface),
        }
        self.fo = Failover(
            cfg.failover_params,
            now=trio.current_time(),
            primary_up=self._usable[Role.PRIMARY],
            backup_up=self._usable[Role.BACKUP],
            resume=resume,
        )
        self.send, self._recv = trio.open_memory_channel[_Msg](math.inf)
        self._sync_stats()

    def path(self, role: Role) -> PathConfig:
        return self.link.primary if role is Role.PRIMARY else self.link.backup

    def start(self) -> None:
        """Install the probe routes and the routes of the initial active path."""
        for role in Role:
            if self._usable[role]:
                self._try(lambda r=role: self.routes.apply_probe_route(self.path(r)))
        route_s = self._try(lambda: self.routes.apply(self.link, self.path(self.fo.active)))
        self._apply_standby()
        log.info(
            "link %s: starting on %s (primary %s, backup %s), routes set in %s",
            self.link.name,
            self.fo.active.value,
            _health(self.fo.healthy(Role.PRIMARY)),
            _health(self.fo.healthy(Role.BACKUP)),
            _ms(route_s),
        )

    def _apply_standby(self) -> None:
        standby = self.fo.active.other
        if self._usable[standby]:  # the kernel refuses a route through a down interface
            self._try(lambda: self.routes.apply_standby(self.link, self.path(standby)))

    def _try(self, action: Any) -> float | None:
        try:
            result = action()
            return result if isinstance(result, float) else None
        except (RouteError, OSError) as exc:
            self.stats.route_errors_total += 1
            log.error("link %s: route change failed: %s", self.link.name, exc)
            return None

    async def run(self) -> None:
        while True:
            deadline = self.fo.get_timer()
            msg: _Msg | None = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                msg = await self._recv.receive()
            if msg is None:
                self._act(self.fo.handle_timer(trio.current_time()))
            else:
                self._handle(msg)

    def _handle(self, msg: _Msg) -> None:
        now = trio.current_time()
        if isinstance(msg, _LinkMsg):
            changed = self._usable[msg.role] != msg.usable
            self._usable[msg.role] = msg.usable
            self._act(self.fo.link_changed(msg.role, msg.usable, now))
            if msg.usable and changed:
                # `ip link set X down` deleted the routes through X: put back what
                # belongs on this path (probe route always, destinations if active).
                self._try(lambda: self.routes.apply_probe_route(self.path(msg.role)))
                if self.fo.active is msg.role:
                    self._try(lambda: self.routes.apply(self.link, self.path(msg.role)))
                else:
                    self._apply_standby()
        elif isinstance(msg, _ProbeMsg):
            key = msg.role.value
            if msg.answered:
                self.stats.probe_answers_total[key] += 1
                self._act(self.fo.probe_ok(msg.role, msg.at))
            else:
                self.stats.probe_misses_total[key] += 1
                self._act(self.fo.probe_missed(msg.role, msg.at))
        else:
            self._act(self.fo.request_failback(now))

    def _act(self, events: list[Event]) -> None:
        if not events:
            return
        for ev in events:
            if isinstance(ev, Switched):
                route_s = self._try(partial(self.routes.apply, self.link, self.path(ev.to)))
                self._apply_standby()
                info = SwitchInfo(
                    time.time(),
                    ev.frm.value,
                    ev.to.value,
                    ev.reason.value,
                    ev.outage,
                    ev.detection,
                    route_s if route_s is not None else math.nan,
                )
                self.stats.switches_total += 1
                self.stats.switches_by_reason[ev.reason.value] = (
                    self.stats.switches_by_reason.get(ev.reason.value, 0) + 1
                )
                if ev.outage is not None:
                    self.stats.outage_seconds_total += ev.outage
                    self.stats.outage_seconds_last = ev.outage
                    self.stats.outage.observe(ev.outage)
                self.stats.recent_switches.append(info)
                # One line per switch, with reason and timing.
                log.warning(
                    "link %s: switched from %s to %s (%s): detected in %s, outage %s, routes set in %s",
                    self.link.name,
                    ev.frm.value,
                    ev.to.value,
                    ev.reason.value,
                    _ms(ev.detection),
                    _ms(ev.outage),
                    _ms(route_s),
                )
            elif isinstance(ev, PathDown):
                log.info("link %s: %s path down (%s)", self.link.name, ev.role.value, ev.reason.value)
            elif isinstance(ev, PathUp):
                log.info("link %s: %s path up", self.link.name, ev.role.value)
            elif isinstance(ev, AllPathsDown):
                self.stats.all_down_total += 1
                log.error("link %s: all paths down: keeping %s", self.link.name, ev.active.value)
            elif isinstance(ev, FailbackRefused):
                log.warning("link %s: fail-back refused: %s", self.link.name, ev.why)
        self._sync_stats()
        self._on_change()

    def _sync_stats(self) -> None:
        self.stats.active = self.fo.active.value
        self.stats.all_down = self.fo.all_down
        self.stats.healthy = {r.value: self.fo.healthy(r) for r in Role}


def _usable(states: dict[str, LinkState], ifname: str) -> bool:
    st = states.get(ifname)
    return st is not None and st.usable


def _ms(seconds: float | None) -> str:
    return "(not measured)" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _health(healthy: bool) -> str:
    return "healthy" if healthy else "not healthy"


# ---------------------------------------------------------------------- the process


class _StateWriter:
    """Rewrites the state file atomically (write + rename) on every change."""

    def __init__(self, path: str | None, stats: NetdStats) -> None:
        self.path = path
        self.stats = stats

    def write(self) -> None:
        if self.path is None:
            return
        # A full disk or a bad path must not stop failover: log and go on.
        try:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.stats.to_json(), f)
            os.replace(tmp, self.path)
        except (OSError, TypeError, ValueError) as exc:
            log.error("state file %s: %s", self.path, exc)


def previous_paths(state_file: str | None) -> dict[str, Role]:
    """The active path of each link as the previous netd left it in its state file
    (a restart must not move traffic back into a path that had failed)."""
    if state_file is None:
        return {}
    try:
        with open(state_file) as f:
            links = json.load(f).get("links", {})
        return {name: Role(link["active"]) for name, link in links.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


async def run(
    cfg: NetworkConfig, stats: NetdStats, state_file: str | None = None, multicast: MulticastConfig | None = None
) -> None:
    resume = previous_paths(state_file)
    writer = _StateWriter(state_file, stats)
    monitor = LinkMonitor()  # subscribe before the snapshot: no event is lost between
    routes = Routes(cfg.service_address, rto_min=cfg.rto_min)
    try:
        initial = await trio.to_thread.run_sync(current_links)
        controllers: list[LinkController] = []
        by_ifname: dict[str, tuple[LinkController, Role]] = {}
        trip: TripPath | NftTripPath | None = None

        def changed() -> None:
            writer.write()
            if trip is not None:
                trip.changed()  # an uplink (or site) switch re-points the trip routes

        for link in cfg.links:
            stats.links[link.name] = LinkStats(link.name)
            ctl = LinkController(link, cfg, routes, stats.links[link.name], initial, changed, resume.get(link.name))
            if link.name in resume:
                log.info(
                    "link %s: resuming on %s (state file): the other path must answer a probe first",
                    link.name,
                    resume[link.name].value,
                )
            controllers.append(ctl)
            by_ifname[link.primary.interface] = (ctl, Role.PRIMARY)
            by_ifname[link.backup.interface] = (ctl, Role.BACKUP)
        _check_sysctls(cfg)
        for ctl in controllers:
            ctl.start()

        def active_paths() -> dict[str, str | None]:
            # Interface of each managed path -> the interface its link uses now.
            out: dict[str, str | None] = {}
            for ctl in controllers:
                active = ctl.path(ctl.fo.active).interface
                out[ctl.link.primary.interface] = active
                out[ctl.link.backup.interface] = active
            return out

        if multicast is not None:
            if stats.trip is None:
                stats.trip = TripState()
            trip = _trip_engine(multicast, stats.trip, active_paths, writer.write)

        async def probe(ctl: LinkController, role: Role) -> None:
            path = ctl.path(role)

            async def report(answered: bool, at: float) -> None:
                ctl.send.send_nowait(_ProbeMsg(role, answered, at))

            await run_probe(path.interface, path.probe_target, cfg.probe_interval, report, misses=cfg.probe_misses)

        async def links() -> None:
            async for st in monitor.events():
                target = by_ifname.get(st.ifname)
                if target is not None:
                    target[0].send.send_nowait(_LinkMsg(target[1], st.usable))

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGUSR1) as sigs:
                async for _ in sigs:
                    log.info("manual fail-back requested")
                    for ctl in controllers:
                        ctl.send.send_nowait(_Failback())

        async def refresh() -> None:
            # Switches rewrite the file at once; this keeps the probe counters fresh.
            while True:
                await trio.sleep(1.0)
                writer.write()

        async def watchdog(period: float) -> None:
            # From the event loop itself: a netd whose loop is stuck stops pinging and
            # systemd restarts it (WatchdogSec in conf/systemd/concentrator-netd.service).
            while True:
                notify("WATCHDOG=1")
                await trio.sleep(period)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(links)
            nursery.start_soon(signals)
            nursery.start_soon(refresh)
            if trip is not None:
                nursery.start_soon(trip.run)
            for ctl in controllers:
                nursery.start_soon(ctl.run)
                for role in Role:
                    nursery.start_soon(probe, ctl, role)
            period = watchdog_period()
            if period is not None:
                nursery.start_soon(watchdog, period)
            stats.ready = True
            writer.write()
            notify(f"READY=1\nSTATUS=managing {len(cfg.links)} links")
            log.info("ready: links %s", ", ".join(link.name for link in cfg.links))
    finally:
        monitor.close()
        routes.close()


def _trip_engine(
    multicast: MulticastConfig, state: TripState, active_paths: Any, on_change: Any
) -> TripPath | NftTripPath | None:
    """The engine this kernel offers for the configuration (netconfig.trip.capability), said
    once; a refusal cannot heal by retrying: said once at ERROR, link failover runs."""
    cap = probe()
    resolved, choice = resolve(multicast, cap)
    state.choose(choice, cap, multicast)
    if resolved is None:
        log.error("trip path not started, link failover runs: %s", choice.reason)
        return None
    log.info("trip path engine %s: %s; %s", resolved.engine, choice.reason, cap.describe())
    engine = TripPath if resolved.engine == SMCROUTE else NftTripPath
    return engine(resolved, state, active_paths, on_change)


def _check_sysctls(cfg: NetworkConfig) -> None:
    """Warn about kernel settings that would undo fast failover (not changed here:
    they belong to the appliance's system configuration)."""
    for link in cfg.links:
        for path in (link.primary, link.backup):
            base = f"/proc/sys/net/ipv4/conf/{path.interface}"
            try:
                with open(f"{base}/ignore_routes_with_linkdown") as f:
                    if f.read().strip() != "1":
                        log.warning(
                            "sysctl net.ipv4.conf.%s.ignore_routes_with_linkdown is not 1: "
                            "a route through a link without carrier would black-hole traffic",
                            path.interface,
                        )
                with open(f"{base}/rp_filter") as f:
                    if f.read().strip() == "1":
                        log.warning(
                            "sysctl net.ipv4.conf.%s.rp_filter is 1 (strict): use 0 or 2, "
                            "paths may be asymmetric during a switch",
                            path.interface,
                        )
            except OSError:
                log.warning("interface %s not found at start", path.interface)


def load(path: str) -> NetworkConfig:
    """Only the `network:` section: failover keeps working when the relay's part of the
    file is broken."""
    return load_sections(path)[0]


def load_sections(path: str) -> tuple[NetworkConfig, MulticastConfig | None]:
    """netd's two sections, `network:` and (optional) `multicast:`; the relay's are
    not read."""
    doc, _, _ = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(path, "(top level)", "a mapping", doc)
    network = parse_network(doc.get("network", MISSING), path)
    try:
        multicast = parse_multicast_section(doc, path, network)
    except ConfigError as exc:
        # A multicast problem must never disable link failover: run without the trip path.
        log.error("trip path disabled, link failover runs: %s", exc)
        multicast = None
    return network, multicast


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="concentrator netd", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the appliance's YAML file (network: section)")
    ap.add_argument(
        "--state",
        help="write a JSON snapshot of the counters here on every change; "
        "read back at start (each link resumes on the path it used)",
    )
    ap.add_argument("--log-level", default="INFO")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        cfg, multicast = load_sections(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    stats = NetdStats()
    if multicast is not None:
        stats.trip = TripState()
    if cfg.metrics_listen is not None:
        trip_stats = stats.trip.stats if stats.trip is not None else None
        serve([LinkManagerCollector(stats, trip_stats)], cfg.metrics_listen)  # a daemon thread, for the process's life
        log.info("metrics on http://%s/metrics", cfg.metrics_listen)

    async def _main() -> int | None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, cfg, stats, args.state, multicast)
                async for signum in stop:
                    log.info("stopping on signal %d (routes left in place)", signum)
                    nursery.cancel_scope.cancel()
                    return signum
        return None

    if trio.run(_main) == signal.SIGINT:
        raise KeyboardInterrupt  # stopped cleanly on Ctrl-C: one line, status 130 (configbase.run_main)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
