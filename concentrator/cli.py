"""The `concentrator` command: relay, check-config, health, demo, netd, trip-path, shedding, ha, evidence."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

import trio

from .config import Config, ConfigError, load_config
from .configbase import MissingTool, StartupError, os_failure, run_main
from .evidence.history import record_accepted
from .relay.windows import window_warnings

if TYPE_CHECKING:
    from .relay.core import LinkTap, Tap
    from .relay.driver import Relay
    from .shedding.report import Sources as ShedReportSources

log = logging.getLogger(__name__)

IP_FREEBIND = 15  # linux/in.h: bind an address this host does not hold (yet); not in Python's socket module


def feature_relay(config: Config) -> Relay:
    """The relay with the taps of the features the file configures and the tasks that
    feed their processes: the relay itself imports none of them (README, Architecture)."""
    from .relay.driver import Relay

    taps: list[Tap] = []
    link_taps: list[LinkTap] = []
    runners: list[Callable[[], Awaitable[None]]] = []
    mqtt, shedding, incidents = config.mqtt, config.shedding, config.incidents
    if mqtt is not None:  # the MQTT mirror: decoding and publishing in its own process
        from .mirror.queue import MirrorQueue
        from .mirror.stats import MirrorStats

        mirror_stats = MirrorStats()
        mirror_queue = MirrorQueue(mqtt.queue_limit, mirror_stats, frozenset(mqtt.critical))
        taps.append(mirror_queue)

        async def mirror() -> None:
            from .mirror.process import MirrorProcess

            await MirrorProcess(mqtt, mirror_queue, relay.stats).run()

        runners.append(mirror)
    if shedding is not None:  # the shedding compliance monitor's copies, fed to its process
        from .shedding.tap import ShedFeeder, ShedTap

        shed_tap = ShedTap(frozenset(s.name for s in shedding.sites), shedding.queue_limit)
        taps.append(shed_tap)
        runners.append(ShedFeeder(shedding, shed_tap).run)
    if incidents is not None:  # the incident register's copies and link events
        from .incidents.tap import IncidentFeeder, IncidentTap

        incident_tap = IncidentTap(incidents.queue_limit)
        taps.append(incident_tap)
        link_taps.append(incident_tap)
        runners.append(IncidentFeeder(incidents, incident_tap).run)
    # In an HA pair the sites are reached from the sites' virtual address only (docs/ha.md).
    source = None if config.ha is None else str(config.ha.sites.virtual_address.ip)
    relay = Relay(config, taps=taps, link_taps=link_taps, runners=runners, source_address=source)
    if mqtt is not None:
        relay.stats.mirror = mirror_stats
    return relay


def _relay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_installed(config)
    # A busy or foreign uplink address is said in one line before anything is logged
    # (exit statuses: README); Relay.run says the same if it is taken meanwhile.
    check_listeners(config, keys=("uplink.listen",))
    log.info("configuration %s (sha256 %s): %d sites", config.file, config.sha256[:12], len(config.sites))
    record_accepted(config, "relay")
    relay = feature_relay(config)

    async def run() -> None:
        from monitoring.exporter import serve_relay

        # Started inside trio (it reads the relay's clock); scrapes are served by a process
        # of its own. Without metrics the relay still relays (the data path comes first);
        # Prometheus then reports the target down.
        try:
            metrics = serve_relay(relay.stats, config)
        except OSError as exc:
            log.error("metrics not served: %s", exc)
            if await _started(args.start_fd):
                await relay.run()
            return
        log.info("metrics on %s", metrics.url)
        try:
            if await _started(args.start_fd):
                await relay.run()
        finally:
            metrics.close()

    trio.run(_until_signal, run)
    return 0


async def _started(fd: int | None) -> bool:
    """With --start-fd (an HA pair, concentrator/ha/supervisor.py): say "loaded" (one byte) and wait,
    with no socket toward the BMI or the sites, until the supervisor writes one byte;
    end of file (the supervisor died) means never start."""
    if fd is None:
        return True
    log.info("standing by until the HA supervisor starts this relay")
    os.write(fd, b"r")
    await trio.lowlevel.wait_readable(fd)
    return os.read(fd, 1) != b""


async def _until_signal(run: Callable[[], Awaitable[None]]) -> None:
    """Run until SIGTERM (a service manager or container stop) or SIGINT, or until `run`
    returns (a standby relay told never to start), then stop cleanly: connections are
    closed and every UPDC keeps what the BMI did not confirm. Stopped by SIGINT (Ctrl-C),
    it then raises KeyboardInterrupt: one line and status 130 (configbase.run_main)."""

    async def run_then_stop() -> None:
        await run()
        nursery.cancel_scope.cancel()

    stopped_by: int | None = None
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(run_then_stop)
            async for stopped_by in signals:
                log.info("%s received: stopping", signal.Signals(stopped_by).name)
                nursery.cancel_scope.cancel()
                break
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt


def shedding_sources(file: str) -> ShedReportSources:
    """What the shedding report reads of a configuration file: its section and, with an
    incident register, the register's word on each shedding (issue 27)."""
    from .incidents.verdicts import RegisterWord
    from .shedding.report import Sources

    config = load_config(file)
    register = None if config.incidents is None else RegisterWord(config.incidents.database)
    return Sources(config.shedding, register)


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    check_installed(config)
    if args.bind:
        check_listeners(config)
    # Warnings, not refusals: the relay starts with these (and logs the certificate dates).
    cautions = window_warnings(config.uplink.params, [site.params for site in config.sites])
    if config.mqtt is not None:
        cautions += config.mqtt.tls_dates
    for caution in cautions:
        print(f"{config.file}: warning: {caution}", file=sys.stderr)
    trip = check_trip_engine(config)
    cas = sum(len(site.common_addresses) for site in config.sites)
    record_accepted(config, "check-config")
    print(f"{config.file}: valid, {len(config.sites)} sites, {cas} common addresses, sha256 {config.sha256}")
    if trip:
        print(trip)
    return 0


def check_trip_engine(config: Config) -> str | None:
    """The trip path engine this host's kernel gives the `multicast:` section (what netd
    will run), as a line to print; an engine the kernel cannot run is refused here."""
    if config.multicast is None:
        return None
    from netconfig.trip.capability import probe, resolve

    cap = probe()
    resolved, choice = resolve(config.multicast, cap)
    if resolved is None:
        expected = f"an engine this kernel offers ({choice.reason})"
        raise ConfigError(config.file, "multicast.engine", expected, choice.asked)
    return f"trip path: engine {resolved.engine} on this host ({choice.reason}); {cap.describe()}"


def check_installed(config: Config) -> None:
    """The optional packages the configuration needs: the mirror (`mqtt:`) needs paho-mqtt
    and cryptography."""
    for module, package in (("paho", "paho-mqtt"), ("cryptography", "cryptography")):
        if config.mqtt is not None and importlib.util.find_spec(module) is None:
            raise MissingTool(f"{config.file}: mqtt", f"the MQTT mirror needs {package}, which is not installed",
                              "pip install 'iec104-concentrator[mqtt]'")  # fmt: skip


def check_listeners(config: Config, keys: Collection[str] | None = None) -> None:
    """Bind every address the appliance will listen on (or those of `keys`), all at once,
    then release them: a busy or foreign address fails here, with the reason, not when the
    relay starts (AddressInUse, AddressNotHere, PermissionRefused, KernelLacks). Bound as
    the relay and the exporters bind (SO_REUSEADDR; IPv6 only for IPv6). An HA pair's
    virtual addresses are held by the active appliance only: there the port is checked,
    not the address (IP_FREEBIND). Two keys of the file on one port are a ConfigError."""
    virtual = set() if config.ha is None else {str(config.ha.uplink.virtual_address.ip)}
    wildcard = ("0.0.0.0", "::")
    taken: dict[tuple[bool, int], list[tuple[str, str]]] = {}  # (IPv6, port) -> (host, key)
    with contextlib.ExitStack() as held:
        for key, listen in config.listeners():
            if keys is not None and key not in keys:
                continue
            ipv6 = ":" in listen.host
            for host, other in taken.get((ipv6, listen.port), []):
                if host == listen.host or wildcard[ipv6] in (host, listen.host):
                    raise ConfigError(config.file, key, f"a port not also used by {other}", str(listen))
            taken.setdefault((ipv6, listen.port), []).append((listen.host, key))
            try:
                sock = held.enter_context(socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if ipv6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if listen.host in virtual:
                    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                sock.bind((listen.host, listen.port))
                sock.listen()  # two bound sockets may share a port; two listening ones may not
            except OSError as exc:
                failure = os_failure(exc, f"{config.file}: {key}", f"listening on {listen}")
                if isinstance(failure, StartupError):
                    raise failure from None
                got = f"{listen}: {exc.strerror or exc}"
                raise ConfigError(config.file, key, "an address and port this host can listen on now", got) from None


def _health(args: argparse.Namespace) -> int:
    """Healthy (0) while a socket listens on the configured uplink port: the container's
    health check. Read from /proc rather than by connecting: a connection from 127.0.0.1
    would be refused by the allowlist and logged every time."""
    port = load_config(args.config).uplink.listen.port
    if listening(port):
        return 0
    print(f"nothing listens on port {port} (uplink.listen)", file=sys.stderr)
    return 1


def listening(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> bool:
    """Whether a TCP socket of this network namespace listens on `port`."""
    for table in tables:
        with open(table, encoding="ascii") as rows:
            next(rows)  # the header
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rpartition(":")[2], 16) == port:  # 0A: LISTEN
                    return True
    return False


def _demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("c104") is None:
        raise MissingTool("demo", "the simulated sites and BMI need c104, which is not installed",
                          "pip install 'iec104-concentrator[demo]'")  # fmt: skip
    from .demo import run_demo

    return run_demo(sites=args.sites, duration=args.duration, sample_period=args.sample_period)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concentrator", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    relay = commands.add_parser("relay", help="run the IEC 104 relay")
    relay.add_argument("--config", required=True, help="YAML configuration file")
    relay.add_argument("--start-fd", type=int, help=argparse.SUPPRESS)  # set by `concentrator ha`
    relay.set_defaults(run=_relay)

    check = commands.add_parser(
        "check-config", help="validate a configuration file, check that its listen addresses are free here, and exit"
    )
    check.add_argument("file")
    check.add_argument(
        "--no-bind",
        dest="bind",
        action="store_false",
        help="do not bind the listen addresses (checking on another host)",
    )
    check.set_defaults(run=_check_config)

    health = commands.add_parser("health", help="exit 0 while the relay listens on the configured uplink port")
    health.add_argument("--config", required=True, help="YAML configuration file")
    health.set_defaults(run=_health)

    demo = commands.add_parser("demo", help="simulated sites, the relay and a simulated BMI on loopback")
    demo.add_argument("--sites", type=int, default=12, help="number of simulated UPDCs (default 12)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    demo.add_argument(
        "--sample-period", type=float, default=4.0, help="seconds between measurements per site (annex A40: 4)"
    )
    demo.set_defaults(run=_demo)

    # Listed for --help only: main() hands `netd` and its options to the link manager.
    commands.add_parser("netd", help="run the link manager (primary/backup failover); netd --help for its options")
    commands.add_parser("shedding", help="shedding compliance: `shedding report --config FILE [--since 7d] "
                        "[--event ID] [--html DIR] [--json]`")  # fmt: skip
    commands.add_parser("incidents", help="the incident register (annex A40 5.7): `incidents --config FILE "
                        "list|show ID|close ID --cause TEXT|report --html DIR` [--json]")  # fmt: skip
    commands.add_parser("maintenance", help="`maintenance --config FILE plan --site S --start T --end T --cause TEXT "
                        "[--config-change FILE] [--requested-by-operator]` (annex A40 5.7.2)")  # fmt: skip
    commands.add_parser("ha", help="run the HA supervisor of one appliance of a pair (keepalived, relay); ha --help")
    commands.add_parser("ha-status", help="this appliance's HA role, from its supervisor; --json")
    commands.add_parser(
        "trip-path", help="show the kernel's multicast trip path per group (installed, interfaces, counters); --json"
    )
    commands.add_parser(
        "evidence", help="the approval dossier (annex A40 5.10) from this appliance; evidence --help for its options"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every command: an expected start-up failure is one line and its own exit status
    (configbase.run_main; README, "Exit statuses"); a traceback is a bug."""
    argv = sys.argv[1:] if argv is None else argv
    return run_main(lambda: _command(argv))


def _command(argv: list[str]) -> int:
    if argv[:1] == ["netd"]:
        # The link manager is its own program (failover must not depend on the relay).
        from netconfig.netd import main as netd_main

        return netd_main(argv[1:])
    if argv[:1] == ["trip-path"]:
        # Reads the kernel only: answers whether the relay or netd run or not.
        from netconfig.trip.report import main as trip_main

        return trip_main(argv[1:])
    if argv[:1] == ["shedding"]:
        # Reads the monitor's record only (concentrator/shedding/report.py).
        from .shedding.report import main as report_main

        if argv[1:2] != ["report"]:
            print("usage: concentrator shedding report (--config FILE | --db FILE) [--since 7d] [--event ID] "
                  "[--html DIR] [--json]", file=sys.stderr)  # fmt: skip
            return 2
        try:
            return report_main(argv[2:], shedding_sources)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    if argv[:1] in (["incidents"], ["maintenance"]):
        # The incident register (concentrator/incidents/cli.py): reads it, or writes through its one writer.
        from .incidents import cli as incidents_cli

        run = incidents_cli.incidents_main if argv[0] == "incidents" else incidents_cli.maintenance_main
        try:
            return run(argv[1:], lambda file: load_config(file).incidents)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    if argv[:1] in (["ha"], ["ha-status"]):
        # The HA supervisor owns the role and starts the relay (concentrator/ha/supervisor.py, docs/ha.md).
        from .ha.supervisor import main as ha_main
        from .ha.supervisor import status_main

        return (ha_main if argv[0] == "ha" else status_main)(argv[1:], load_config)
    if argv[:1] == ["evidence"]:
        from .evidence import main as evidence_main

        return evidence_main(argv[1:], load_config)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
