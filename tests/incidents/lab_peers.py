"""Peers of the incident lab test, run inside its namespaces:
`python -m tests.incidents.lab_peers site|bmi ...`.

    site  a UPDC that sends its power samples every PERIOD s and obeys breaker and
          release commands (tests.peers.shedding_site, lib60870's queue semantics),
          listening on the site's service address
    bmi   a BMI on our codec: starts data transfer, then at --shed-after s sends the
          breaker opening (select, execute) to --ca and at --release-after s the release;
          it writes the wall time of each command to --out (one JSON line each)
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from functools import partial

import trio

from concentrator.sim.points import breaker_command, release_command
from tests.peers.codec_peers import CodecMaster
from tests.peers.shedding_site import SheddingSite


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def site(listen: str, ca: int, period: float) -> None:
    host, _, port = listen.rpartition(":")
    updc = SheddingSite(ca, sample_period=period)
    async with trio.open_nursery() as nursery:
        # SheddingSite.run() serves 127.0.0.1; here it listens on the site's service address.
        await nursery.start(partial(trio.serve_tcp, updc.station._handle, int(port), host=host))
        nursery.start_soon(updc._sampler)
        nursery.start_soon(updc._commands, nursery)
        print(f"site: CA {ca} listening on {listen}", flush=True)
        await _until_signal()
        nursery.cancel_scope.cancel()


async def bmi(target: str, ca: int, shed_after: float, release_after: float, out: str) -> None:
    host, _, port = target.rpartition(":")
    master = CodecMaster()
    async with trio.open_nursery() as nursery:
        await master.run_started(nursery, host, int(port), attempts=300)
        started = trio.current_time()
        print("bmi: started", flush=True)

        def log(what: str) -> None:
            with open(out, "a") as f:
                f.write(json.dumps({"what": what, "at": time.time()}) + "\n")

        await trio.sleep_until(started + shed_after)
        master.send(breaker_command(ca, False, select=True))
        master.send(breaker_command(ca, False))
        log("shed")
        await trio.sleep_until(started + release_after)
        master.send(release_command(ca, select=True))
        master.send(release_command(ca))
        log("release")
        await _until_signal()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("site")
    s.add_argument("--listen", required=True)
    s.add_argument("--ca", type=int, required=True)
    s.add_argument("--period", type=float, default=1.0)
    b = commands.add_parser("bmi")
    b.add_argument("--target", required=True)
    b.add_argument("--ca", type=int, required=True)
    b.add_argument("--shed-after", type=float, required=True)
    b.add_argument("--release-after", type=float, required=True)
    b.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "site":
        trio.run(site, args.listen, args.ca, args.period)
    else:
        trio.run(bmi, args.target, args.ca, args.shed_after, args.release_after, args.out)


if __name__ == "__main__":
    main()
