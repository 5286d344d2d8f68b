"""One-way latency through the path with a client that is not the bottleneck: 12 sites in
ping-pong, one exchange in flight at a time.

    python -m bench run pingpong [--exchanges 5000] [--rounds 3] [--before-tree DIR]   # from the checkout's root

bench/run_all.py's generator is one asyncio process playing 100 sites and the BMI; its
own wake-ups (100-400 µs on this VM) are in every figure there. Here the BMI is a plain
blocking client and the twelve UPDCs one selector loop, both on the sans-I/O `Link`, so
that a hop through haproxy costs tens of microseconds, as in an independent probe.

Each exchange: the BMI sends an ASDU stamped with its send time (CLOCK_MONOTONIC, the
same clock in every process) to the next site in turn; the site notes the one-way time
down, answers at once with an ASDU stamped with its own send time and carrying that
figure; the BMI notes the time up. Paths, rounds alternating: direct (one BMI connection
per site), haproxy (TCP mode, one thread, one frontend per site), trio (a bare trio
forwarder per site: the relay's driver without IEC 104 or core, the floor under it), the
relay (one BMI connection), and with --before-tree the relay from that source tree. Reported: one-way
p50 / p99 each way, the ratio to haproxy's in the same round, and the path's CPU per
exchange (two ASDUs).

`--strace DIR` runs `strace -c -f` on the path's process during the measured exchanges and
prints its system calls per exchange (strace slows the path: the timings of such a run
are not figures); `--profile DIR` records a py-spy profile of the Python paths
(summarise with `python -m bench.profile_summary DIR/PATH-ROUND.txt`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import percentile
from bench.loadgen import STAMPED_IOA, cpu_seconds, read_stamped, stamped_asdu
from bench.run_all import HOST, haproxy_cfg, port_block, relay_yaml, started
from concentrator.iec104.asdu import Cause
from concentrator.iec104.link import AsduReceived, Link, LinkParams, Role

SITES = 12
FIRST_CA = 101
now_ns = time.perf_counter_ns


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def stations(first_port: int) -> None:
    """Twelve UPDCs on ports first_port + i: answer every ASDU at once."""
    selector = selectors.DefaultSelector()
    for i in range(SITES):
        listener = socket.create_server((HOST, first_port + i))
        selector.register(listener, selectors.EVENT_READ, (None, FIRST_CA + i))
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            link, ca = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if link is None:
                conn, _ = sock.accept()
                selector.register(_nodelay(conn), selectors.EVENT_READ, (Link(Role.CONTROLLED), ca))
                continue
            data = sock.recv(65536)
            received = now_ns()
            if not data:
                selector.unregister(sock)
                sock.close()
                continue
            link.receive_data(data, time.monotonic())
            while (event := link.next_event()) is not None:
                if type(event) is AsduReceived:
                    down_us = (received - read_stamped(event.asdu)[3]) // 1000
                    answer = stamped_asdu(ca, Cause.SPONTANEOUS, STAMPED_IOA, down_us, now_ns())
                    link.send_asdu(answer, time.monotonic())
            if out := link.data_to_send():
                sock.sendall(out)


class Bmi:
    """The BMI: one started link per connection, one exchange at a time."""

    def __init__(self, ports: list[int]) -> None:
        self.conns = []
        for port in ports:
            sock = _nodelay(socket.create_connection((HOST, port)))
            link = Link(Role.CONTROLLING, LinkParams())
            link.start(time.monotonic())
            sock.sendall(link.data_to_send())
            while not link.started:
                link.receive_data(sock.recv(65536), time.monotonic())
                while link.next_event() is not None:
                    pass
            self.conns.append((sock, link))

    def exchange(self, site: int) -> tuple[int, int]:
        """(µs down, µs up) of one exchange with `site`."""
        sock, link = self.conns[site % len(self.conns)]
        ca = FIRST_CA + site
        link.send_asdu(stamped_asdu(ca, Cause.ACTIVATION, STAMPED_IOA, 0, now_ns()), time.monotonic())
        sock.sendall(link.data_to_send())
        while True:
            data = sock.recv(65536)
            received = now_ns()
            if not data:
                raise ConnectionError("the path closed the BMI's connection")
            link.receive_data(data, time.monotonic())
            answer = None
            while (event := link.next_event()) is not None:
                if type(event) is AsduReceived:
                    answer = event.asdu
            if out := link.data_to_send():  # S-frames after w answers
                sock.sendall(out)
            if answer is not None:
                _, answer_ca, down_us, sent = read_stamped(answer)
                assert answer_ca == ca, (answer_ca, ca)
                return down_us, (received - sent) // 1000


@contextlib.contextmanager
def watching(tool: str, pid: int, out: Path) -> Iterator[None]:
    """strace -c or py-spy on `pid` for the block's duration; SIGINT makes either write."""
    argv = {
        "strace": ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        "py-spy": ["py-spy", "record", "--pid", str(pid), "-r", "1000", "-f", "raw", "-o", str(out)],
    }[tool]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)


def syscalls(strace_c: Path) -> dict[str, int]:
    """Calls per system call from a `strace -c` summary."""
    counts = {}
    for line in strace_c.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def measure(path: str, exchanges: int, workdir: Path, tree: Path | None, tool: str = "",
            out: Path | None = None) -> dict[str, float]:  # fmt: skip
    site_port = port_block(SITES, 26000)
    front = port_block(SITES + 1, site_port + SITES, range(site_port, site_port + SITES))
    with contextlib.ExitStack() as stack:
        station = stack.enter_context(
            started(
                [sys.executable, "-m", "bench.pingpong", "--stations", str(site_port)], workdir / f"{path}.stations.log"
            )
        )
        time.sleep(0.5)
        if station.poll() is not None:
            raise RuntimeError("stations did not start")
        forwarder = None
        if path == "direct":
            ports = [site_port + i for i in range(SITES)]
        elif path == "trio":
            argv = [sys.executable, "-m", "bench.floor", "--sites", str(front), str(site_port), str(SITES)]
            forwarder = stack.enter_context(started(argv, workdir / "trio.log"))
            ports = [front + i for i in range(SITES)]
        elif path == "haproxy":
            cfg = workdir / "haproxy.cfg"
            cfg.write_text(haproxy_cfg(SITES, site_port, front))
            forwarder = stack.enter_context(started(["haproxy", "-db", "-f", str(cfg)], workdir / "haproxy.log"))
            ports = [front + i for i in range(SITES)]
        else:
            cfg = workdir / f"{path}.yaml"
            cfg.write_text(relay_yaml(SITES, site_port, front, front + 1, (12, 8)))
            argv = [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", str(cfg)]
            forwarder = stack.enter_context(started(argv, workdir / f"{path}.log", tree))
            ports = [front]
        bmi = _connect(ports, forwarder)
        if path not in ("direct", "haproxy"):
            time.sleep(1.0)  # the relay starts its sites after the BMI's STARTDT
        for n in range(500):  # warm-up
            bmi.exchange(n % SITES)
        watch = watching(tool, forwarder.pid, out) if tool and forwarder and out else contextlib.nullcontext()
        with watch:
            cpu_before = cpu_seconds(forwarder.pid) if forwarder else 0.0
            down, up = [], []
            for n in range(exchanges):
                d, u = bmi.exchange(n % SITES)
                down.append(d)
                up.append(u)
            cpu = (cpu_seconds(forwarder.pid) - cpu_before) if forwarder else float("nan")
    return {"down_p50": percentile(down, 50), "down_p99": percentile(down, 99), "up_p50": percentile(up, 50),
            "up_p99": percentile(up, 99), "cpu_us_per_exchange": cpu / exchanges * 1e6}  # fmt: skip


def _connect(ports: list[int], forwarder: subprocess.Popen[bytes] | None) -> Bmi:
    deadline = time.monotonic() + 20
    while True:
        try:
            return Bmi(ports)
        except OSError:
            if time.monotonic() > deadline or (forwarder is not None and forwarder.poll() is not None):
                raise
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before-tree", type=Path, help='add the path "before": the relay from this source tree')
    parser.add_argument("--paths", default="direct,haproxy,trio,relay", help="direct, haproxy, trio, relay")
    parser.add_argument("--strace", type=Path, metavar="DIR", help="count the path's system calls (strace -c)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles of the Python paths")
    parser.add_argument("--stations", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stations:
        stations(args.stations)
        return 0
    paths = [p for p in args.paths.split(",") if p != "relay"] + (["before"] if args.before_tree else [])
    paths += ["relay"] if "relay" in args.paths.split(",") else []
    tool, where = ("strace", args.strace) if args.strace else ("py-spy", args.profile) if args.profile else ("", None)
    if where:
        where.mkdir(parents=True, exist_ok=True)
    if tool == "strace":
        return count_syscalls(paths, args, where)
    print("| round | path | down p50 | down p99 | up p50 | up p99 | ratio down p50 / p99 | ratio up p50 / p99 |"
          " path CPU µs per exchange |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="pingpong-") as tmp:
        for n in range(1, args.rounds + 1):
            base: dict[str, float] = {}
            for path in paths:
                profiled = tool and path not in ("direct", "haproxy")
                out = where / f"{path}-{n}.txt" if profiled and where else None
                tree = args.before_tree if path == "before" else None
                r = measure(path, args.exchanges, Path(tmp), tree, tool if profiled else "", out)
                if path == "haproxy":
                    base = r
                ratios = [
                    f"{r[f'{way}_p50'] / base[f'{way}_p50']:.2f} / {r[f'{way}_p99'] / base[f'{way}_p99']:.2f}"
                    if base and path != "haproxy" else "-"
                    for way in ("down", "up")
                ]  # fmt: skip
                print(f"| {n} | {path} | {r['down_p50']:.0f} | {r['down_p99']:.0f} | {r['up_p50']:.0f} | "
                      f"{r['up_p99']:.0f} | {ratios[0]} | {ratios[1]} | {r['cpu_us_per_exchange']:.0f} |",
                      flush=True)  # fmt: skip
    return 0


def count_syscalls(paths: list[str], args: argparse.Namespace, where: Path) -> int:
    """One run per path under strace -c: system calls per exchange, the busiest first."""
    counted = {}
    with tempfile.TemporaryDirectory(prefix="pingpong-") as tmp:
        for path in (p for p in paths if p != "direct"):
            out = where / f"{path}.strace.txt"
            measure(path, args.exchanges, Path(tmp), args.before_tree if path == "before" else None, "strace", out)
            counted[path] = syscalls(out)
    names = sorted(
        {name for c in counted.values() for name in c}, key=lambda x: -max(c.get(x, 0) for c in counted.values())
    )
    print("| system call | " + " | ".join(counted) + " |")
    print("|---|" + "---:|" * len(counted))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{c.get(name, 0) / args.exchanges:.2f}" for c in counted.values()) + " |")
    totals = [sum(c.values()) / args.exchanges for c in counted.values()]
    print("| all | " + " | ".join(f"{t:.2f}" for t in totals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
