"""Traffic peers run inside the lab's namespaces: `python -m tests.lab.harness_peers`.

    source   connects to HOST:PORT and sends numbered records at a fixed rate
    forward  listens and relays each connection to a target (a stand-in relay:
             plain bytes, so the lab can measure TCP survival without IEC 104)
    sink     accepts connections and appends (connection, stream, seq, arrival) of
             every record to a binary file the harness reads while it runs
    station  an IEC 104 UPDC (the lead's QueueingStation: keeps unconfirmed ASDUs and
             sends them again on the next started connection) producing numbered
             counters (M_IT_NA_1) at a fixed rate
    master   an IEC 104 BMI (CodecMaster) that logs every ASDU received as
             (connection, CA, seq, arrival) in the sink's format, reconnecting if lost

A record is 24 bytes: stream id (u32), pad, sequence number (u64), send time (f64).
All namespaces share CLOCK_MONOTONIC, so arrival times compare with the harness's
own `time.monotonic()` fault timestamps.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import time
from dataclasses import dataclass
from functools import partial

import trio

RECORD = struct.Struct("!IIQd")  # stream, pad, seq, send time
LOGREC = struct.Struct("<IIQd")  # conn, stream, seq, arrival time


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async for _ in sigs:
            return


# ---------------------------------------------------------------------- source


async def source(target: str, stream: int, rate: float, bind: str | None) -> None:
    host, port = _hostport(target)
    seq = 0
    reconnects = -1
    while True:
        try:
            sock = trio.socket.socket()
            if bind:
                await sock.bind((bind, 0))
            await sock.connect((host, port))
            conn = trio.SocketStream(sock)
        except OSError as exc:
            print(f"source: connect failed: {exc}", flush=True)
            await trio.sleep(0.1)
            continue
        reconnects += 1
        print(f"source: connected (reconnects={reconnects})", flush=True)
        start = trio.current_time()
        sent = 0
        try:
            while True:
                # Catch up to the schedule in one write: the rate holds even when a
                # write blocked for a while (records then carry the later send time).
                due = int((trio.current_time() - start) * rate) + 1
                if due > sent:
                    now = time.monotonic()
                    batch = b"".join(RECORD.pack(stream, 0, seq + i, now) for i in range(due - sent))
                    await conn.send_all(batch)
                    seq += due - sent
                    sent = due
                await trio.sleep(0.001)
        except (trio.BrokenResourceError, OSError) as exc:
            print(f"source: connection lost: {exc}", flush=True)
            await conn.aclose()
            await trio.sleep(0.1)


# ---------------------------------------------------------------------- forward


async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while True:
            data = await src.receive_some(65536)
            if not data:
                break
            await dst.send_all(data)
    finally:
        # Either side ending ends the pair: close both so the peers notice.
        await src.aclose()
        await dst.aclose()


async def forward(listen: str, target: str) -> None:
    lhost, lport = _hostport(listen)
    thost, tport = _hostport(target)

    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(thost, tport)
        except OSError as exc:
            print(f"forward: upstream connect failed: {exc}", flush=True)
            await client.aclose()
            return
        print("forward: pair open", flush=True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream)
                nursery.start_soon(_pump, upstream, client)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            print(f"forward: pair closed: {group.exceptions[0]!r}", flush=True)

    await trio.serve_tcp(handle, lport, host=lhost)


# ---------------------------------------------------------------------- sink


@dataclass
class _SinkState:
    conns: int = 0


async def sink(listen: str, out: str) -> None:
    host, port = _hostport(listen)
    state = _SinkState()
    log = open(out, "ab", buffering=0)

    async def handle(conn: trio.SocketStream) -> None:
        state.conns += 1
        conn_id = state.conns
        print(f"sink: connection {conn_id}", flush=True)
        pending = b""
        try:
            while True:
                data = await conn.receive_some(65536)
                if not data:
                    break
                arrived = time.monotonic()
                pending += data
                n = len(pending) // RECORD.size
                rows = []
                for i in range(n):
                    stream, _pad, seq, _sent = RECORD.unpack_from(pending, i * RECORD.size)
                    rows.append(LOGREC.pack(conn_id, stream, seq, arrived))
                pending = pending[n * RECORD.size :]
                log.write(b"".join(rows))
        except (trio.BrokenResourceError, OSError) as exc:
            print(f"sink: connection {conn_id} lost: {exc}", flush=True)
        print(f"sink: connection {conn_id} closed", flush=True)

    await trio.serve_tcp(handle, port, host=host)


def read_sink(path: str) -> list[tuple[int, int, int, float]]:
    """(conn, stream, seq, arrival) rows written so far by a sink."""
    with open(path, "rb") as f:
        data = f.read()
    usable = len(data) - len(data) % LOGREC.size
    return [LOGREC.unpack_from(data, off) for off in range(0, usable, LOGREC.size)]


# ---------------------------------------------------------------------- IEC 104


async def station(listen: str, common_address: int, rate: float) -> None:
    from tests.peers.codec_peers import QueueingStation

    host, port = _hostport(listen)
    st = QueueingStation(common_address)
    async with trio.open_nursery() as nursery:
        # QueueingStation.serve() listens on 127.0.0.1 only; here it must listen on the
        # site's service address, so its connection handler is served directly.
        await nursery.start(partial(trio.serve_tcp, st._handle, port, host=host))
        print(f"station: CA {common_address} listening on {listen}", flush=True)
        start = trio.current_time()
        made = 0
        seen = 0
        while True:
            due = int((trio.current_time() - start) * rate) + 1
            while made < due:
                st.enqueue_counter()
                made += 1
            if st.connections != seen:
                # The harness counts these lines: more than one means the relay's
                # session to this site was re-established.
                seen = st.connections
                print(f"station: connections={seen}", flush=True)
            await trio.sleep(0.001)


async def master(target: str, out: str) -> None:
    from tests.peers.codec_peers import CodecMaster, counter_of

    host, port = _hostport(target)
    log = open(out, "ab", buffering=0)
    # CodecMaster stamps arrivals with trio's clock, which has its own origin:
    # convert to time.monotonic() so the harness can compare with fault instants.
    offset = trio.current_time() - time.monotonic()
    conn_id = 0
    while True:
        conn_id += 1
        m = CodecMaster()

        async def drain(m: CodecMaster, conn_id: int) -> None:
            done = 0
            while True:
                rows = []
                for at, asdu in m.received[done:]:
                    ca, seq = counter_of(asdu)
                    rows.append(LOGREC.pack(conn_id, ca, seq, at - offset))
                done += len(rows)
                if rows:
                    log.write(b"".join(rows))
                await trio.sleep(0.002)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, m, conn_id)
                print(f"master: connection {conn_id}", flush=True)
                reason = await m.run(host, port)
                print(f"master: connection {conn_id} ended: {reason}", flush=True)
                await trio.sleep(0.01)  # let drain() log the last frames
                nursery.cancel_scope.cancel()
        except* OSError as group:
            print(f"master: connection {conn_id} failed: {group.exceptions[0]!r}", flush=True)
        await trio.sleep(0.2)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.harness_peers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("source")
    s.add_argument("--target", required=True)
    s.add_argument("--stream", type=int, default=0)
    s.add_argument("--rate", type=float, default=1000.0)
    s.add_argument("--bind")
    f = sub.add_parser("forward")
    f.add_argument("--listen", required=True)
    f.add_argument("--target", required=True)
    k = sub.add_parser("sink")
    k.add_argument("--listen", required=True)
    k.add_argument("--out", required=True)
    t = sub.add_parser("station")
    t.add_argument("--listen", required=True)
    t.add_argument("--ca", type=int, required=True)
    t.add_argument("--rate", type=float, default=500.0)
    m = sub.add_parser("master")
    m.add_argument("--target", required=True)
    m.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if args.cmd == "source":
                nursery.start_soon(source, args.target, args.stream, args.rate, args.bind)
            elif args.cmd == "forward":
                nursery.start_soon(forward, args.listen, args.target)
            elif args.cmd == "station":
                nursery.start_soon(station, args.listen, args.ca, args.rate)
            elif args.cmd == "master":
                nursery.start_soon(master, args.target, args.out)
            else:
                nursery.start_soon(sink, args.listen, args.out)
            await _until_signal()
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
