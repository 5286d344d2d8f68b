"""The sites of the HA lab: `python -m tests.netns.ha_peers --first 198.51.100.101 --count 12 ...`.

Many UPDCs in one process (the machine is small): each a `QueueingStation` (keeps what
was not confirmed and sends it again on the next started connection, as lib60870 does)
listening on its own address, producing numbered counters (M_IT_NA_1, CA 100 + i) at
`--rate` per second. Every connection opened, started and closed is one JSON line in
`--log` with the station's own count of open connections at that moment and, on close,
when that connection last brought anything (a frame the station's link reported): the
UPDCs' view of how many relays talk to them. A master that dies without closing leaves
a connection open here until the station sends on it; that one brings nothing more.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import IO

import trio

from concentrator.iec104.link import DataTransferStarted, Event
from tests.peers.codec_peers import QueueingStation
from tests.peers.session import LinkSession


class LoggedStation(QueueingStation):
    def __init__(self, index: int, log: IO[str]) -> None:
        super().__init__(100 + index)
        self.index = index
        self.log = log
        self.open = 0  # connections accepted and not yet closed (counted here, before any await)
        self.last_rx: dict[trio.abc.Stream, float] = {}  # per connection: its last event from the peer

    def _write(self, event: str, stream: trio.SocketStream | None = None, **extra: object) -> None:
        peer = None
        if stream is not None:
            try:
                host, port = stream.socket.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = None
        self.log.write(
            json.dumps(
                {"t": time.monotonic(), "site": self.index, "event": event, "peer": peer, "open": self.open, **extra}
            )
            + "\n"
        )

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.open += 1
        self._write("open", stream, conn=id(stream))
        try:
            await super()._handle(stream)
        finally:
            self.open -= 1
            self._write("close", conn=id(stream), last_rx=self.last_rx.pop(stream, None))

    def _on_event(self, session: LinkSession, event: Event) -> None:
        self.last_rx[session.stream] = time.monotonic()
        if isinstance(event, DataTransferStarted):
            self._write("start")
        super()._on_event(session, event)


async def run(first: str, count: int, port: int, rate: float, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)
    base = ipaddress.IPv4Address(first)
    stations = [LoggedStation(i, log) for i in range(1, count + 1)]
    async with trio.open_nursery() as nursery:
        for i, st in enumerate(stations):
            await nursery.start(partial(trio.serve_tcp, st._handle, port, host=str(base + i)))
        print(f"stations: {count} listening from {first}:{port}", flush=True)
        start = trio.current_time()
        made = 0
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(_stop_on, signals, nursery.cancel_scope)
            while True:  # cancelled by _stop_on
                due = int((trio.current_time() - start) * rate) + 1
                while made < due:
                    for st in stations:
                        st.enqueue_counter()
                    made += 1
                await trio.sleep(0.005)


async def _stop_on(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.netns.ha_peers")
    ap.add_argument("--first", required=True, help="address of station 1; the others follow")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--port", type=int, default=2404)
    ap.add_argument("--rate", type=float, default=20.0, help="counters per second per station")
    ap.add_argument("--log", required=True)
    args = ap.parse_args(argv)
    trio.run(run, args.first, args.count, args.port, args.rate, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
