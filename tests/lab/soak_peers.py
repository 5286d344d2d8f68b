"""Peers of the chaos soak (bench/soak.py), run inside the lab's namespaces.

    python -m tests.lab.soak_peers stations --spec SITES.json --control FILE --status FILE --commands FILE
    python -m tests.lab.soak_peers bmi --target HOST:PORT --rows FILE --events FILE --control FILE ...

`stations` is every site's UPDC in one process (100 processes would cost more than
the relay they test): one listening socket per site, opened in the site's namespace
(a socket keeps the namespace it was made in), each a station with lib60870's queue
semantics (codec_peers.QueueingStation: unconfirmed ASDUs go back to waiting when the
connection is lost and leave again, in order, on the next started one). Each site
sends stamped measured values (M_ME_NC_1, SQ=1, three elements: sequence number and
the CLOCK_MONOTONIC ns it arose at, shared by every namespace) at its own rate, and
answers a single command (C_SC_NA_1) with its activation confirmation, in the same
queue. Commands received are logged one JSON line each (site's CA, command's CA,
IOA = command id). A control file (JSON lines appended by the soak) kills a station
(its sockets reset, its listener closed: connection refused) and restarts it, or
makes it hostile for a while (garbage bytes, more than k unconfirmed frames, a TESTFR
flood without reading, ASDUs with a common address that is not its own). A killed
station keeps its queue: the soak checks the concentrator, not a UPDC's memory.

`bmi` is the BMI: one started connection (manual acknowledgement after w frames or
0.1 s, each ASDU logged before its confirmation leaves), reconnecting when it is lost;
single commands to random sites (and some unknown CAs) at a steady rate; an IEC 104
Ed. 2 switch (a second connection started after the first is fully confirmed) on
command; a hostile connection flooding TESTFR without reading on command. Every ASDU
received is a 32-byte row in `--rows` (connection, CA, type, cause, sequence, arrival
ns, stamp ns); connections, commands sent and answers are JSON lines in `--events`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from concentrator.iec104.apci import UFunction, encode_i, encode_u
from concentrator.iec104.asdu import Cause
from concentrator.iec104.decode import TypeId
from concentrator.iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Event,
    Link,
    LinkParams,
    Role,
)
from tests.peers.session import LinkSession, set_nodelay

# type 13 (measured value, short float: so the relay's "no measurements" clock sees
# it), VSQ SQ=1 x3, cause, originator, CA, IOA; three (4 octets, QDS 0) elements:
# sequence, stamp low word, stamp high word. The float octets are never read as floats.
STAMPED = struct.Struct("<BBBBHHBIBIBIB")
STAMPED_IOA = 1000
ROW = struct.Struct("<IHBBQqq")  # conn, CA, type, cause (+P/N bit), sequence, arrival ns, stamp ns
FOREIGN_CA = 60000
FOREIGN_CA_BYTES = FOREIGN_CA.to_bytes(2, "little")
FOREIGN_RUN_GAP = 1.0  # s


def stamped(ca: int, sequence: int, stamp_ns: int) -> bytes:
    return STAMPED.pack(
        TypeId.M_ME_NC_1, 0x83, Cause.SPONTANEOUS, 0, ca, STAMPED_IOA, 0,
        sequence & 0xFFFFFFFF, 0, stamp_ns & 0xFFFFFFFF, 0, stamp_ns >> 32, 0,
    )  # fmt: skip


def read_stamped(asdu: bytes) -> tuple[int, int]:
    """(sequence, stamp ns) of a `stamped` ASDU."""
    f = STAMPED.unpack_from(asdu)
    return f[7], f[9] | (f[11] << 32)


def command(ca: int, command_id: int) -> bytes:
    """C_SC_NA_1 activation, IOA = command id (3 octets), execute ON."""
    return (
        bytes((TypeId.C_SC_NA_1, 1, Cause.ACTIVATION, 0))
        + ca.to_bytes(2, "little")
        + (command_id & 0xFFFFFF).to_bytes(3, "little")
        + b"\x01"
    )


def command_fields(asdu: bytes) -> tuple[int, int, int]:
    """(cause with P/N bit, CA, command id) of a single command or its answer."""
    return asdu[2] & 0x7F, asdu[4] | asdu[5] << 8, int.from_bytes(asdu[6:9], "little")


_CLONE_NEWNET = 0x40000000


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """`fn()` run in a thread of its own moved into the named network namespace (setns
    changes the calling thread only), so what it opens lives there."""
    out: list[Any] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


def reset(sock: socket.socket | trio.socket.SocketType) -> None:
    """Close with RST at once, as the kernel does for a process that died."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class ControlFile:
    """JSON lines appended by the soak; `new()` returns those not read yet."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def write_json_atomically(path: str, doc: object) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- stations


class Station:
    """One site's UPDC: QueueingStation's semantics with stamped data and commands."""

    def __init__(self, spec: dict[str, Any], commands_log: Any, params: LinkParams) -> None:
        self.netns: str = spec["netns"]
        host, _, port = spec["listen"].rpartition(":")
        self.addr = (host, int(port))
        self.ca: int = spec["ca"]
        self.rate: float = spec["rate"]
        self.params = params
        self.commands_log = commands_log
        self.waiting: deque[bytes] = deque()
        self.unconfirmed: deque[bytes] = deque()
        self.produced = 0
        self.connections = 0
        self.mode = "normal"  # normal, killed, or hostile:<kind>
        self.listener: trio.SocketListener | None = None
        self.cancel: trio.CancelScope | None = None
        self.sockets: set[trio.socket.SocketType] = set()
        self._active: LinkSession | None = None
        self._sessions: set[LinkSession] = set()
        # When it sent ASDUs for the foreign CA (CLOCK_MONOTONIC s), as runs [first, last]
        # with gaps under FOREIGN_RUN_GAP: those left in its queue by a foreign episode
        # leave on its next connection, after the episode (the alert's judge needs that).
        self.foreign_runs: list[list[float]] = []

    # --------------------------------------------------------- data
    def produce(self, count: int) -> None:
        for _ in range(count):
            self.waiting.append(stamped(self.ca, self.produced, time.monotonic_ns()))
            self.produced += 1
            if self.mode == "hostile:foreign":
                # A misconfigured UPDC: every other ASDU for a plant that is not its own.
                self.waiting.append(stamped(FOREIGN_CA, self.produced, time.monotonic_ns()))
        self._pump()

    def _pump(self) -> None:
        session = self._active
        if session is None or session.closed:
            return
        now = trio.current_time()
        while self.waiting and session.link.can_send:
            asdu = self.waiting.popleft()
            session.link.send_asdu(asdu, now)
            self.unconfirmed.append(asdu)
            if asdu[4:6] == FOREIGN_CA_BYTES:
                self._sent_foreign(time.monotonic())
        session.wake()

    def _sent_foreign(self, at: float) -> None:
        runs = self.foreign_runs
        if runs and at - runs[-1][1] < FOREIGN_RUN_GAP:
            runs[-1][1] = at
        else:
            runs.append([at, at])

    def _deactivate(self) -> None:
        self._active = None
        self.waiting.extendleft(reversed(self.unconfirmed))
        self.unconfirmed.clear()

    def _on_event(self, session: LinkSession, event: Event) -> None:
        if isinstance(event, DataTransferStarted):
            if self._active is not None and self._active is not session:
                self._active.close("superseded: STARTDT on another connection")
            self._deactivate()
            self._active = session
        elif isinstance(event, DataTransferStopped) and session is self._active:
            self._deactivate()
        elif isinstance(event, Acknowledged) and session is self._active:
            for _ in range(event.count):
                self.unconfirmed.popleft()
        elif isinstance(event, AsduReceived):
            asdu = event.asdu
            if asdu[0] == TypeId.C_SC_NA_1:
                cause, ca, command_id = command_fields(asdu)
                self.commands_log.write(
                    json.dumps({"site": self.ca, "ca": ca, "id": command_id, "cause": cause, "t": time.monotonic()})
                    + "\n"
                )
                # The activation confirmation, in the queue behind the data before it.
                self.waiting.append(asdu[:2] + bytes((Cause.ACTIVATION_CON,)) + asdu[3:])
        self._pump()

    # --------------------------------------------------------- connections
    def open_listener(self) -> None:
        def make() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.addr)
            sock.listen(16)
            return sock

        sock = in_netns(self.netns, make)
        self.listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def serve(self) -> None:
        """Accept connections until killed; then wait to be restarted."""
        while True:
            listener = self.listener
            if listener is None:
                await trio.sleep(0.05)
                continue
            with trio.CancelScope() as self.cancel:
                async with trio.open_nursery() as nursery:
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(self._handle, stream)
            self.cancel = None
            if self.mode == "killed":  # its port now refuses connections
                listener.socket.close()
                self.listener = None

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        sock = stream.socket
        self.sockets.add(sock)
        try:
            if self.mode.startswith("hostile:") and self.mode != "hostile:foreign":
                await self._hostile(stream, self.mode.split(":", 1)[1])
                return
            set_nodelay(stream)
            session = LinkSession(
                stream, Link(Role.CONTROLLED, self.params, now=trio.current_time()), self._on_event, "station"
            )
            self._sessions.add(session)
            try:
                await session.run()
            finally:
                self._sessions.discard(session)
                if session is self._active:
                    self._deactivate()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.sockets.discard(sock)
            await trio.aclose_forcefully(stream)

    async def _hostile(self, stream: trio.SocketStream, kind: str) -> None:
        data = b""
        with trio.move_on_after(5):
            while encode_u(UFunction.STARTDT_ACT) not in data:
                chunk = await stream.receive_some(256)
                if not chunk:
                    return
                data += chunk
        if kind == "garbage":
            await stream.send_all(bytes(random.getrandbits(8) for _ in range(64)))
        elif kind == "greedy":  # k + 1 I-frames without waiting for a confirmation
            await stream.send_all(encode_u(UFunction.STARTDT_CON))
            frames = [encode_i(n, 0, bytes((TypeId.M_IT_NA_1, 1, 3, 0)) + self.ca.to_bytes(2, "little") + bytes(8))
                      for n in range(self.params.k + 1)]  # fmt: skip
            await stream.send_all(b"".join(frames))
        elif kind == "testfr":  # TESTFR acts without ever reading
            frame = encode_u(UFunction.TESTFR_ACT) * 256
            while True:
                await stream.send_all(frame)
                await trio.sleep(0.005)
        await trio.sleep(30)

    def kill(self) -> None:
        """The UPDC process dies: its sockets reset, its port refuses connections."""
        for sock in list(self.sockets):
            reset(sock)
        if self.cancel is not None:
            self.cancel.cancel()

    def status(self) -> dict[str, object]:
        return {
            "produced": self.produced,
            "waiting": len(self.waiting),
            "unconfirmed": len(self.unconfirmed),
            "connections": self.connections,
            "started": int(self._active is not None),
            "mode": self.mode,
            "foreign_runs": self.foreign_runs,
        }


async def stations(args: argparse.Namespace) -> None:
    with open(args.spec) as f:
        specs = json.load(f)
    commands_log = open(args.commands, "a", buffering=1)
    sites = [Station(spec, commands_log, LinkParams()) for spec in specs]
    by_ca = {s.ca: s for s in sites}
    control = ControlFile(args.control)
    for site in sites:
        site.open_listener()
    producing = True
    async with trio.open_nursery() as nursery:
        for site in sites:
            nursery.start_soon(site.serve)
        print(f"stations: {len(sites)} listening", flush=True)
        write_json_atomically(args.status, {"ready": True, "sites": {}})
        start = trio.current_time()
        last_status = 0.0
        while True:
            now = trio.current_time()
            if producing:
                for site in sites:
                    due = int((now - start) * site.rate) + 1
                    if due > site.produced:
                        site.produce(due - site.produced)
            for cmd in control.new():
                if cmd["cmd"] == "stop_producing":
                    producing = False
                    continue
                site = by_ca[cmd["ca"]]
                if cmd["cmd"] == "kill":
                    site.mode = "killed"
                    site.kill()
                elif cmd["cmd"] == "restart":
                    while site.listener is not None and site.cancel is not None:
                        await trio.sleep(0.01)  # the kill is still being carried out
                    site.mode = "normal"
                    if site.listener is None:
                        site.open_listener()
                elif cmd["cmd"] == "hostile":
                    site.mode = f"hostile:{cmd['kind']}"
                    for sock in list(site.sockets):  # the next connection meets the hostile station
                        reset(sock)
                        sock.close()
                elif cmd["cmd"] == "calm":
                    was = site.mode
                    site.mode = "normal"
                    if was != "hostile:foreign":
                        for sock in list(site.sockets):
                            reset(sock)
                            sock.close()
            if now - last_status >= 0.5:
                last_status = now
                write_json_atomically(
                    args.status,
                    {"ready": True, "producing": producing, "sites": {str(s.ca): s.status() for s in sites}},
                )
            await trio.sleep(0.02)


# ---------------------------------------------------------------------- BMI


class Bmi:
    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.target.rpartition(":")
        self.target = (host, int(port))
        self.params = LinkParams()
        self.rows_fd = os.open(args.rows, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.events = open(args.events, "a", buffering=1)
        self.cas: list[int] = [int(c) for c in args.cas.split(",")]
        self.unknown: list[int] = [int(c) for c in args.unknown_cas.split(",")]
        self.command_rate: float = args.command_rate
        self.conn_base = os.getpid() * 1000
        self.conn_count = 0
        self.active: LinkSession | None = None
        self.active_conn = 0
        self.switching = False
        self.next_command = random.Random(os.getpid()).randrange(1 << 20) << 3
        self.hostile = False
        self.unreleased: dict[int, int] = {}  # per session (id): received, not yet confirmed

    def event(self, **doc: object) -> None:
        self.events.write(json.dumps({"t": time.monotonic(), **doc}) + "\n")

    async def connection(self, nursery: trio.Nursery, start: bool) -> LinkSession | None:
        try:
            stream = await trio.open_tcp_stream(*self.target)
        except OSError as exc:
            self.event(kind="connect_failed", error=str(exc))
            return None
        set_nodelay(stream)
        self.conn_count += 1
        conn = self.conn_base + self.conn_count
        link = Link(Role.CONTROLLING, self.params, manual_ack=True, now=trio.current_time())
        session = LinkSession(stream, link, lambda s, e: self._on_event(conn, s, e), f"BMI connection {conn}")
        self.event(kind="open", conn=conn)

        async def run() -> None:
            reason = await session.run()
            self.event(kind="closed", conn=conn, reason=reason)
            self.unreleased.pop(id(session), None)
            if session is self.active:
                self.active = None

        nursery.start_soon(run)
        if start:
            self._start(conn, session)
        return session

    def _start(self, conn: int, session: LinkSession) -> None:
        session.link.start(trio.current_time())
        session.wake()
        self.active, self.active_conn = session, conn
        self.event(kind="startdt", conn=conn)

    def _on_event(self, conn: int, session: LinkSession, event: Event) -> None:
        if isinstance(event, AsduReceived):
            asdu = event.asdu
            ca = asdu[4] | asdu[5] << 8 if len(asdu) >= 6 else 0
            seq = stamp = 0
            if asdu[0] == TypeId.M_ME_NC_1 and len(asdu) == STAMPED.size:
                seq, stamp = read_stamped(asdu)
            elif asdu[0] == TypeId.C_SC_NA_1:
                seq = command_fields(asdu)[2]
            # Logged before the confirmation can leave: a row is what the BMI confirmed.
            row = ROW.pack(conn & 0xFFFFFFFF, ca, asdu[0], asdu[2] & 0x7F, seq, time.monotonic_ns(), stamp)
            os.write(self.rows_fd, row)
            self.unreleased[id(session)] = self.unreleased.get(id(session), 0) + 1
            if self.unreleased[id(session)] >= self.params.w:
                self._confirm(session)
        elif isinstance(event, DataTransferStarted):
            self.event(kind="started", conn=conn)

    def _confirm(self, session: LinkSession) -> None:
        pending = self.unreleased.pop(id(session), 0)
        if pending and not session.closed:
            session.link.acknowledge(pending, trio.current_time())
            session.wake()

    async def confirm_periodically(self) -> None:
        while True:
            await trio.sleep(0.1)
            if self.active is not None:
                self._confirm(self.active)

    async def keep_connected(self, nursery: trio.Nursery) -> None:
        while True:
            if self.active is None and not self.switching:
                await self.connection(nursery, start=True)
            await trio.sleep(0.2)

    async def switch(self, nursery: trio.Nursery) -> None:
        """Ed. 2: open another connection, confirm everything on the started one, then
        STARTDT on the new one (the relay closes the old one)."""
        self.switching = True
        try:
            new = await self.connection(nursery, start=False)
            if new is None:
                return
            old = self.active
            if old is not None:
                self._confirm(old)
            await trio.sleep(0.01)
            if not new.closed:
                self._start(self.conn_base + self.conn_count, new)
        finally:
            self.switching = False

    async def commands(self) -> None:
        rng = random.Random(os.getpid())
        period = 1.0 / self.command_rate
        while True:
            await trio.sleep(period)
            if self.command_rate <= 0:
                continue
            session = self.active
            if session is None or session.closed or not session.link.started or not session.link.can_send:
                continue
            ca = rng.choice(self.unknown) if rng.random() < 0.1 else rng.choice(self.cas)
            self.next_command += 1
            command_id = self.next_command & 0xFFFFFF
            session.link.send_asdu(command(ca, command_id), trio.current_time())
            session.wake()
            self.event(kind="command", conn=self.active_conn, ca=ca, id=command_id)

    async def hostile_connection(self) -> None:
        """A connection from the BMI's address that floods TESTFR acts and never reads."""
        frame = encode_u(UFunction.TESTFR_ACT) * 256
        while True:
            if not self.hostile:
                await trio.sleep(0.1)
                continue
            try:
                stream = await trio.open_tcp_stream(*self.target)
            except OSError:
                await trio.sleep(0.5)
                continue
            self.event(kind="hostile_open")
            try:
                while self.hostile:
                    with trio.fail_after(2):
                        await stream.send_all(frame)
                    await trio.sleep(0.005)
            except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                self.event(kind="hostile_closed", error=repr(exc))
            await trio.aclose_forcefully(stream)
            await trio.sleep(0.5)


async def bmi(args: argparse.Namespace) -> None:
    peer = Bmi(args)
    control = ControlFile(args.control)
    control.new()  # a restarted BMI does not replay what its predecessor was told
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.keep_connected, nursery)
        nursery.start_soon(peer.confirm_periodically)
        nursery.start_soon(peer.commands)
        nursery.start_soon(peer.hostile_connection)
        print("bmi: running", flush=True)
        while True:
            for cmd in control.new():
                if cmd["cmd"] == "switch":
                    nursery.start_soon(peer.switch, nursery)
                elif cmd["cmd"] == "hostile":
                    peer.hostile = bool(cmd["on"])
                elif cmd["cmd"] == "stop_commands":  # the end of a run: nothing more in flight
                    peer.command_rate = 0.0
            await trio.sleep(0.05)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.soak_peers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stations")
    s.add_argument("--spec", required=True)
    s.add_argument("--control", required=True)
    s.add_argument("--status", required=True)
    s.add_argument("--commands", required=True)
    b = sub.add_parser("bmi")
    b.add_argument("--target", required=True)
    b.add_argument("--rows", required=True)
    b.add_argument("--events", required=True)
    b.add_argument("--control", required=True)
    b.add_argument("--cas", required=True, help="the sites' CAs, comma-separated")
    b.add_argument("--unknown-cas", required=True)
    b.add_argument("--command-rate", type=float, default=2.0)
    args = ap.parse_args(argv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stations if args.cmd == "stations" else bmi, args)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    break
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
