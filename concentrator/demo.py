"""`concentrator demo`: the appliance's main job on an embedded default, on loopback.

N simulated UPDCs (c104 servers), the relay, and a simulated BMI (a c104 client that
interrogates and synchronises the clock on connect, then sends a select-and-execute
breaker command to one site after another), with a live per-site table each second.
"""

from __future__ import annotations

import socket
import sys
import time
from contextlib import ExitStack

import c104
import trio

from monitoring.exporter import serve_relay

from .config import Config, parse_config
from .relay.driver import Relay
from .relay.stats import RelayStats
from .sim.bmi import BmiSimulator
from .sim.points import free_tcp_port
from .sim.updc import UpdcSimulator

FIRST_CA = 101
DEFAULT_METRICS_PORT = 9104  # conf/prometheus.yml's target for the relay
COMMAND_PERIOD = 5.0


def demo_config(site_ports: list[int], uplink_port: int, metrics_port: int) -> Config:
    return parse_config(
        {
            "uplink": {"listen": f"127.0.0.1:{uplink_port}", "allowed_peers": ["127.0.0.1"]},
            "sites": [
                {
                    "name": f"site-{n + 1:02d}",
                    "common_addresses": [FIRST_CA + n],
                    "endpoints": [f"127.0.0.1:{port}"],
                    "interruptibility": "instantaneous" if n % 3 else "emergency",
                }
                for n, port in enumerate(site_ports)
            ],
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        },
        "<demo>",
    )


def _metrics_port() -> int:
    """The port conf/prometheus.yml scrapes if it is free, so that a Prometheus started
    with it sees the demo at once; any free port otherwise."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
        except OSError:
            return free_tcp_port()
    return DEFAULT_METRICS_PORT


def run_demo(sites: int, duration: float | None, sample_period: float) -> int:
    if not 1 <= sites <= 1000:
        print("demo: --sites must be 1..1000", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        updcs = [
            stack.enter_context(
                UpdcSimulator(
                    f"site-{n + 1:02d}",
                    FIRST_CA + n,
                    sample_period=sample_period,
                    random_change_period=15.0,
                    seed=n,
                )
            )
            for n in range(sites)
        ]
        config = demo_config([u.port for u in updcs], free_tcp_port(), _metrics_port())
        # Ctrl-C leaves as KeyboardInterrupt (inside trio's exception groups) through the
        # stack, which stops the simulators; configbase.run_main says it in one line, 130.
        trio.run(_run, config, duration)
    return 0


async def _run(config: Config, duration: float | None) -> None:
    relay = Relay(config)
    cas = [site.common_addresses[0] for site in config.sites]
    commands = {"ok": 0, "failed": 0}
    metrics = serve_relay(relay.stats, config)  # its own process answers the scrapes
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            bmi = BmiSimulator("127.0.0.1", relay.listen_port, cas, init=c104.Init.ALL)
            bmi.start()
            try:
                nursery.start_soon(_send_commands, bmi, cas, commands)
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    await _show_table(relay, bmi, commands, metrics.url)
            finally:
                bmi.stop()
                nursery.cancel_scope.cancel()
    finally:
        metrics.close()


async def _send_commands(bmi: BmiSimulator, cas: list[int], commands: dict[str, int]) -> None:
    """One breaker select-and-execute every few seconds, each site in turn, so the
    command direction shows in the table too."""
    close = False
    n = 0
    while True:
        await trio.sleep(COMMAND_PERIOD)
        ca = cas[n % len(cas)]
        n += 1
        close = not close if n % len(cas) == 1 else close
        ok = await trio.to_thread.run_sync(bmi.select_and_execute_breaker, ca, close, abandon_on_cancel=True)
        commands["ok" if ok else "failed"] += 1


async def _show_table(relay: Relay, bmi: BmiSimulator, commands: dict[str, int], metrics_url: str) -> None:
    started = time.monotonic()
    previous = 0
    if metrics_url.endswith(f":{DEFAULT_METRICS_PORT}/metrics"):
        scrape_hint = "prometheus --config.file=conf/prometheus.yml scrapes it"
    else:
        scrape_hint = f"port {DEFAULT_METRICS_PORT} was busy: set this one in conf/prometheus.yml"
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    while True:
        await trio.sleep(1.0)
        forwarded = relay.stats.uplink.asdus_up
        at_bmi = len(bmi.received.asdus())
        print(clear + render(relay.stats, relay.listen_port, time.monotonic() - started), end="")
        print(
            f"uplink: {relay.stats.uplink.active_peer or 'not started'} | forwarded {forwarded} ASDUs "
            f"({forwarded - previous}/s) | received by the BMI {at_bmi} | commands {commands['ok']} confirmed, "
            f"{commands['failed']} failed | cause-46 answers {relay.stats.uplink.negative_answers}\n"
            f"Prometheus metrics: {metrics_url} ({scrape_hint})\n",
            flush=True,
        )
        previous = forwarded


def render(stats: RelayStats, port: int, elapsed: float) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}"

    def us(value: float | None) -> str:
        # Time inside the relay: from the wake-up that read the site's frame to the write
        # that handed its copy to the uplink's socket (kernel and wire time are in the
        # benchmarks).
        return "-" if value is None else f"{value * 1e6:.0f}"

    lines = [
        f"concentrator demo: {len(stats.sites)} sites, relay for the BMI on 127.0.0.1:{port}, {elapsed:.0f} s",
        f"{'site':<9} {'CA':>5} {'state':<10} {'up':>7} {'down':>5} {'relay µs':>9} {'BMI ack ms':>10} {'conn':>4}",
    ]
    for site in stats.sites.values():
        lines.append(
            f"{site.name:<9} {','.join(map(str, site.common_addresses)):>5} {site.state:<10} {site.asdus_up:>7} "
            f"{site.asdus_down:>5} {us(site.last_latency_up):>9} {ms(site.last_ack_delay):>10} {site.connects:>4}"
        )
    return "\n".join(lines) + "\n"
