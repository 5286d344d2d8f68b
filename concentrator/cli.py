"""The `concentrator` command: relay, check-config, demo, netd, trip-path, evidence."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

from .config import ConfigError, load_config
from .evidence.history import record_accepted

log = logging.getLogger(__name__)


def _relay(args: argparse.Namespace) -> int:
    from .relay import Relay

    config = load_config(args.config)
    log.info("configuration %s (sha256 %s): %d sites", config.file, config.sha256[:12], len(config.sites))
    record_accepted(config, "relay")
    relay = Relay(config)

    async def run() -> None:
        from monitoring.exporter import serve_relay

        # Started inside trio (it reads the relay's clock); scrapes are served by a process
        # of its own. Without metrics the relay still relays (the data path comes first);
        # Prometheus then reports the target down.
        try:
            metrics = serve_relay(relay.stats, config)
        except OSError as exc:
            log.error("metrics not served: %s", exc)
            await relay.run()
            return
        log.info("metrics on %s", metrics.url)
        try:
            await relay.run()
        finally:
            metrics.close()

    trio.run(_until_signal, run)
    return 0


async def _until_signal(run: Callable[[], Awaitable[None]]) -> None:
    """Run until SIGTERM (a service manager or container stop) or SIGINT, then stop
    cleanly: connections are closed and every UPDC keeps what the BMI did not confirm."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(run)
            async for signum in signals:
                log.info("%s received: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    cas = sum(len(site.common_addresses) for site in config.sites)
    record_accepted(config, "check-config")
    print(f"{config.file}: valid, {len(config.sites)} sites, {cas} common addresses, sha256 {config.sha256}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sites=args.sites, duration=args.duration, sample_period=args.sample_period)




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concentrator", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    relay = commands.add_parser("relay", help="run the IEC 104 relay")
    relay.add_argument("--config", required=True, help="YAML configuration file")
    relay.set_defaults(run=_relay)

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file")
    check.set_defaults(run=_check_config)

    demo = commands.add_parser("demo", help="simulated sites, the relay and a simulated BMI on loopback")
    demo.add_argument("--sites", type=int, default=12, help="number of simulated UPDCs (default 12)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    demo.add_argument(
        "--sample-period", type=float, default=4.0, help="seconds between measurements per site (annex A40: 4)"
    )
    demo.set_defaults(run=_demo)

    # Listed for --help only: main() hands `netd` and its options to the link manager.
    commands.add_parser("netd", help="run the link manager (primary/backup failover); netd --help for its options")
    commands.add_parser(
        "trip-path", help="show the kernel's multicast trip path per group (installed, interfaces, counters); --json"
    )
    commands.add_parser(
        "evidence", help="the approval dossier (annex A40 5.10) from this appliance; evidence --help for its options"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["netd"]:
        # The link manager is its own program (failover must not depend on the relay).
        from netconfig.netd import main as netd_main

        return netd_main(argv[1:])
    if argv[:1] == ["trip-path"]:
        # Reads the kernel only: answers whether the relay or netd run or not.
        from netconfig.tripreport import main as trip_main

        return trip_main(argv[1:])
    if argv[:1] == ["evidence"]:
        from .evidence import main as evidence_main

        return evidence_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
