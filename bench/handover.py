"""The Ed. 2 hand-over, switched away and straight back, many times, with every site
streaming (issue 10, item 1).

    python -m bench run handover                     # 100 times, 12 sites, 1 s between switches
    python -m bench run handover --iterations 5 --hold 0.3   # (from the checkout's root)

Two BMI connections A and B (one redundancy group, `Ed2Master`); B is started; in each
iteration A sends STARTDT (the active role moves to A and the relay closes B), then
`--hold` seconds later B (opened again) sends STARTDT. Twelve UPDCs with lib60870's
queue semantics (`QueueingStation`) stream counters all along. Everything runs in one
trio process over loopback sockets, with the relay as `concentrator.relay.Relay`.

Reported: crashes (relay connections closed with cause internal_error, or an exception),
early confirmations (a UPDC confirmed a frame the BMI had not confirmed yet), lost
frames (generated, never received by the BMI) after a final drain, site disconnects
during the run (the hand-over must not touch the sites), and how long after each
switch data flowed again on the new connection: the first ASDU, and the first ASDU the
BMI had never seen (new data, i.e. end-to-end confirmation working again).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import trio

from bench.common import percentile
from concentrator.config import parse_config
from concentrator.iec104.link import LinkParams
from concentrator.relay.driver import Relay
from tests.peers.codec_peers import Ed2Master, QueueingStation, counter_of


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _stream(station: QueueingStation, rate: float, stop: trio.Event) -> None:
    while not stop.is_set():
        station.enqueue_counter()
        await trio.sleep(1 / rate)


async def _until(condition: Any, timeout: float) -> float | None:
    """Seconds until `condition()` holds, or None after `timeout`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.002)
        return trio.current_time() - start
    return None


async def handover(iterations: int = 100, hold: float = 1.0, sites: int = 12, rate: float = 50.0) -> dict[str, Any]:
    stations = [QueueingStation(101 + n) for n in range(sites)]
    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(station.serve) for station in stations]
        data = {
            "uplink": {"listen": f"127.0.0.1:{_free_port()}", "allowed_peers": ["127.0.0.1"]},
            "sites": [
                {
                    "name": f"site-{n + 1:02d}",
                    "common_addresses": [101 + n],
                    "endpoints": [f"127.0.0.1:{port}"],
                    "interruptibility": "instantaneous",
                }
                for n, port in enumerate(ports)
            ],
            "metrics": {"listen": f"127.0.0.1:{_free_port()}"},
        }
        relay = Relay(parse_config(data, "<handover>"))
        await nursery.start(relay.run)
        master = Ed2Master("127.0.0.1", relay.listen_port, LinkParams(), confirm_every=0.05)
        early: list[bytes] = []
        for station in stations:
            station.on_confirmed = lambda asdu: early.append(asdu) if asdu not in master.confirmed else None
        await nursery.start(master.run)
        await master.start(1)
        if await _until(lambda: all(s.stats.state == "started" for s in relay.sites), 10) is None:
            raise RuntimeError("sites did not start")
        stop = trio.Event()
        for station in stations:
            nursery.start_soon(_stream, station, rate, stop)
        await trio.sleep(0.5)
        connects_before = [s.stats.connects for s in relay.sites]
        first_asdu: list[float] = []
        first_new: list[float] = []
        failures: list[str] = []
        for iteration in range(iterations):
            for target in (0, 1):  # A takes the role, then B takes it back
                seen = {counter_of(asdu) for _, _, asdu in master.received}
                switched_at = trio.current_time()
                await master.start(target)

                def after_switch(target: int = target, since: float = switched_at) -> list[tuple[float, bytes]]:
                    return [(t, a) for n, t, a in master.received if n == target and t >= since]

                def new_data(seen: set[tuple[int, int]] = seen) -> list[float]:
                    return [t for t, a in after_switch() if counter_of(a) not in seen]

                if await _until(new_data, 5.0) is None:
                    failures.append(f"iteration {iteration}: no new data on connection {target} within 5 s")
                    continue
                # From the STARTDT to the first ASDU, and to the first never-seen ASDU,
                # by the times the BMI recorded them.
                first_asdu.append(after_switch()[0][0] - switched_at)
                first_new.append(new_data()[0] - switched_at)
                await trio.sleep(hold)
        stop.set()
        drained = await _until(lambda: all(s.confirmed_all for s in stations), 30.0)
        received = {counter_of(asdu) for _, _, asdu in master.received}
        lost = sum(1 for s in stations for seq in range(s._next_sequence) if (s.common_address, seq) not in received)
        uplink = relay.stats.uplink
        result = {
            "iterations": iterations,
            "switches": 2 * iterations,
            "sites": sites,
            "rate_per_site": rate,
            "hold_s": hold,
            "generated": sum(s._next_sequence for s in stations),
            "received_by_bmi": len(master.received),
            "duplicates": len(master.received) - len(received),
            "lost": lost,
            "drained": drained is not None,
            "early_confirmations": len(early),
            "crashes": uplink.disconnects["internal_error"]
            + sum(s.stats.disconnects["internal_error"] for s in relay.sites),
            "superseded_closes": uplink.disconnects["superseded"],
            "site_reconnects": sum(s.stats.connects for s in relay.sites) - sum(connects_before),
            "requeued": uplink.requeued,
            "failures": failures,
            "first_asdu_after_switch_s": _summary(first_asdu),
            "first_new_asdu_after_switch_s": _summary(first_new),
        }
        nursery.cancel_scope.cancel()
    return result


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds between the two switches")
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--rate", type=float, default=50.0, help="ASDU/s each site sends")
    args = parser.parse_args()
    result = trio.run(handover, args.iterations, args.hold, args.sites, args.rate)
    print(json.dumps(result, indent=2))
    ok = (
        not result["failures"]
        and result["lost"] == 0
        and result["early_confirmations"] == 0
        and result["crashes"] == 0
        and result["drained"]
        and result["first_new_asdu_after_switch_s"].get("max", 99) < 1.0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
