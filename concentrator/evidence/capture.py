"""Read-only packet capture: one AF_PACKET socket per interface, into pcap files.

Nothing here changes the system: the sockets are not promiscuous (the concentrator's
own interfaces see every packet to and from it anyway) and join no group. Each frame
keeps the kernel's receive timestamp (SO_TIMESTAMPNS), so frames of different
interfaces are put in one order. The kernel's drop counter (PACKET_STATISTICS) is read
at the end: a capture with drops cannot prove anything about every ASDU, and says so.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE = 33
SNAPLEN = 262144  # whole GRO super-frames, never cut
LINKTYPE_ETHERNET = 1  # loopback frames carry a zeroed Ethernet header too


@dataclass(frozen=True, slots=True)
class Packet:
    t: float  # kernel timestamp, seconds since the epoch
    ifname: str
    outgoing: bool  # sent by this host (PACKET_OUTGOING), else received
    frame: bytes


@dataclass
class CaptureResult:
    packets: list[Packet] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    files: dict[str, str] = field(default_factory=dict)  # interface -> pcap path
    kernel_drops: dict[str, int] = field(default_factory=dict)  # interface -> frames the kernel dropped
    sizes: dict[str, int] = field(default_factory=dict)  # interface -> pcap bytes
    truncated_at: float | None = None  # when the byte limit stopped the capture early


class CaptureError(RuntimeError):
    pass


def _pcap_header() -> bytes:
    # Nanosecond pcap (magic a1b23c4d): tshark, scapy and Wireshark read it.
    return struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def _open(ifname: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as exc:
        raise CaptureError("capturing needs root (or CAP_NET_RAW): run `concentrator evidence` as root") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        sock.bind((ifname, 0))
    except OSError as exc:
        sock.close()
        raise CaptureError(f"cannot capture on interface {ifname!r}: {exc.strerror or exc}") from exc
    return sock


class Capture:
    """`start()`, then `stop()` returns every frame seen on `interfaces` in between."""

    def __init__(self, interfaces: list[str], out_dir: str, max_bytes: int = 512 << 20) -> None:
        self.interfaces = interfaces
        self.out_dir = out_dir
        # Frames are kept in memory for the analysis: bounded, and a capture cut short says so.
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result = CaptureResult()
        self._socks: dict[int, tuple[str, socket.socket, bool]] = {}
        self._error: BaseException | None = None

    def start(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        for name in self.interfaces:
            sock = _open(name)
            loopback = False
            try:
                with open(f"/sys/class/net/{name}/type") as f:
                    loopback = int(f.read()) == ARPHRD_LOOPBACK
            except (OSError, ValueError):
                pass
            self._socks[sock.fileno()] = (name, sock, loopback)
        # Drain what queued on a socket between socket() and bind(): frames of any interface.
        for _name, sock, _lo in self._socks.values():
            sock.setblocking(False)
            try:
                while sock.recv(SNAPLEN):
                    pass
            except BlockingIOError:
                pass
        for _name, sock, _lo in self._socks.values():
            sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reading resets the counters
        self._result.started = time.time()
        self._thread = threading.Thread(target=self._run, name="evidence-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        files = {}
        try:
            for name, _sock, _lo in self._socks.values():
                path = os.path.join(self.out_dir, f"{name}.pcap")
                files[name] = open(path, "wb")
                files[name].write(_pcap_header())
                self._result.files[name] = path
            packets = self._result.packets
            fds = list(self._socks)
            kept = 0
            while not self._stop.is_set() and self._result.truncated_at is None:
                ready, _, _ = select.select(fds, [], [], 0.05)
                for fd in ready:
                    name, sock, loopback = self._socks[fd]
                    while True:
                        try:
                            data, anc, _flags, addr = sock.recvmsg(SNAPLEN, 64)
                        except BlockingIOError:
                            break
                        if addr[0] != name:
                            continue
                        outgoing = addr[2] == PACKET_OUTGOING
                        if loopback and outgoing:
                            continue  # loopback shows each frame twice: once out, once in
                        t_ns = time.time_ns()
                        for level, kind, value in anc:
                            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                                sec, nsec = struct.unpack("=qq", value[:16])
                                t_ns = sec * 1_000_000_000 + nsec
                        kept += len(data)
                        if kept > self.max_bytes:
                            self._result.truncated_at = t_ns / 1e9
                            break
                        packets.append(Packet(t_ns / 1e9, name, outgoing, data))
                        files[name].write(
                            struct.pack("<IIII", t_ns // 1_000_000_000, t_ns % 1_000_000_000, len(data), len(data))
                            + data
                        )
        except BaseException as exc:  # noqa: BLE001  (reported by stop())
            self._error = exc
        finally:
            for f in files.values():
                f.close()

    def stop(self) -> CaptureResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._result.ended = time.time()
        for name, sock, _lo in self._socks.values():
            _packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self._result.kernel_drops[name] = drops
            sock.close()
        for name, path in self._result.files.items():
            self._result.sizes[name] = os.path.getsize(path)
        if self._error is not None:
            raise CaptureError(f"capture failed: {self._error!r}") from self._error
        self._result.packets.sort(key=lambda p: p.t)
        return self._result
