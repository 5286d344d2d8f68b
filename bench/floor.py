"""What one forwarded message costs at the least: the floor under the relay's CPU per ASDU.

    python -m bench run floor [--messages 5000] [--gap 0.001] [--rounds 3]   # from the checkout's root

One client sends 16 bytes through a forwarder to an echo server and waits for the echo,
then sleeps `gap` (so each message wakes the forwarder on its own, as at the relay's
nominal load, where every site's ASDU arrives alone). Forwarders, one at a time, rounds
alternating:

- haproxy:  TCP mode, one thread (the baseline of bench/run_all.py);
- epoll:    Python, one `select.epoll` loop: wait, os.read, os.write (no framework);
- trio:     Python, trio, one task per direction: wait_readable, os.read, os.write
            (what the relay's driver did per connection before issue 28, with no
            IEC 104 and no core; also a path of the ping-pong benchmarks, `--sites`).

Reported per forwarder: CPU per message (user + system, from /proc, over the whole
run; a message is one direction, so one exchange is two) and the client's round-trip
p50 / p99. The relay's own figure (bench/RESULTS.md) minus trio's here is what the
relay's Python costs per ASDU beyond its event loop.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import percentile
from bench.loadgen import cpu_seconds

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _accept_and_connect(listen_port: int, target_port: int) -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server((HOST, listen_port))
    print("ready", flush=True)
    a, _ = listener.accept()
    b = socket.create_connection((HOST, target_port))
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
    return a, b


def forward_epoll(listen_port: int, target_port: int) -> None:
    a, b = _accept_and_connect(listen_port, target_port)
    other = {a.fileno(): b.fileno(), b.fileno(): a.fileno()}
    ep = select.epoll()
    for fd in other:
        ep.register(fd, select.EPOLLIN)
    while True:
        for fd, _ in ep.poll():
            data = os.read(fd, 65536)
            if not data:
                return
            os.write(other[fd], data)


async def trio_copy(src: int, dst: int) -> None:
    """One direction of a bare trio forwarder: one wake-up, one read, one write per message."""
    import trio

    while True:
        await trio.lowlevel.wait_readable(src)
        data = os.read(src, 65536)
        if not data:
            return
        os.write(dst, data)


def forward_trio(listen_port: int, target_port: int) -> None:
    import trio

    async def main() -> None:
        a, b = _accept_and_connect(listen_port, target_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_copy, a.fileno(), b.fileno())
            nursery.start_soon(trio_copy, b.fileno(), a.fileno())

    trio.run(main)


def forward_trio_sites(first_front: int, first_site: int, count: int) -> None:
    """The bare trio forwarder as a path of the ping-pong benchmarks (bench/pingpong.py,
    bench/run_all.py): `count` front ports, each forwarding every connection to its site's
    port with `trio_copy`, one task per direction. Prints "ready" once it listens."""
    import trio

    async def serve(listener: trio.SocketListener, site_port: int, nursery: trio.Nursery) -> None:
        while True:
            a = await listener.accept()
            b = await trio.open_tcp_stream(HOST, site_port)
            fds = a.socket.fileno(), b.socket.fileno()  # type: ignore[attr-defined]
            nursery.start_soon(trio_copy, fds[0], fds[1])
            nursery.start_soon(trio_copy, fds[1], fds[0])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                (listener,) = await trio.open_tcp_listeners(first_front + i, host=HOST)
                nursery.start_soon(serve, listener, first_site + i, nursery)
            print("ready", flush=True)

    trio.run(main)


def echo(port: int) -> None:
    listener = socket.create_server((HOST, port))
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def start(argv: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None
    if argv[0] != "haproxy" and process.stdout.readline() != b"ready\n":
        raise RuntimeError(f"{argv} did not start")
    return process


def measure(kind: str, messages: int, gap: float) -> dict[str, float]:
    echo_port, front_port = free_port(), free_port()
    processes = [start([sys.executable, "-m", "bench.floor", "--serve", "echo", str(echo_port), "0"])]
    try:
        if kind == "haproxy":
            cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
            cfg.write(
                "global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout client 1m\n  timeout server 1m\n"
                f"  timeout connect 5s\nlisten floor\n  bind {HOST}:{front_port}\n  server s {HOST}:{echo_port}\n"
            )
            cfg.close()
            forwarder = start(["haproxy", "-db", "-f", cfg.name])
            time.sleep(0.5)
        else:
            forwarder = start([sys.executable, "-m", "bench.floor", "--serve", kind, str(front_port), str(echo_port)])
        processes.append(forwarder)
        client = socket.create_connection((HOST, front_port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        cpu_before = cpu_seconds(forwarder.pid)
        for _ in range(messages):
            sent = time.perf_counter_ns()
            client.sendall(b"x" * 16)
            got = 0
            while got < 16:
                got += len(client.recv(64))
            rtts.append((time.perf_counter_ns() - sent) / 1000)
            time.sleep(gap)
        cpu = cpu_seconds(forwarder.pid) - cpu_before
        client.close()
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return {"cpu_us_per_message": cpu / (2 * messages) * 1e6, "rtt_p50_us": percentile(rtts, 50),
            "rtt_p99_us": percentile(rtts, 99)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--gap", type=float, default=0.001)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "LISTEN", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--sites", type=int, nargs=3, metavar=("FRONT", "SITE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites:
        forward_trio_sites(*args.sites)
        return 0
    if args.serve:
        kind, listen, target = args.serve[0], int(args.serve[1]), int(args.serve[2])
        {"echo": lambda: echo(listen), "epoll": lambda: forward_epoll(listen, target),
         "trio": lambda: forward_trio(listen, target)}[kind]()  # fmt: skip
        return 0
    print("| round | forwarder | CPU µs per message | RTT p50 µs | RTT p99 µs |")
    print("|---|---|---:|---:|---:|")
    for n in range(1, args.rounds + 1):
        for kind in ("haproxy", "epoll", "trio"):
            r = measure(kind, args.messages, args.gap)
            print(f"| {n} | {kind} | {r['cpu_us_per_message']:.1f} | {r['rtt_p50_us']:.0f} | {r['rtt_p99_us']:.0f} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
