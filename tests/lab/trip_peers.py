"""Trip-message peers for the lab and the benchmark (run inside a namespace).

    python -m tests.lab.trip_peers receive --group G --port P --ifaces p0,p1 --out FILE
        [--unicast ADDR:PORT]
    python -m tests.lab.trip_peers receive --group G --port P --spec SITES.json
    python -m tests.lab.trip_peers send --group G --port P --src S --iface c0 --count N --out FILE

`receive` stands for a UPDC: it joins the group on its interfaces (a site is allowed
to; the concentrator is not) and writes one JSON line per datagram: SHA-256 of the
payload, source address and port, interface, and the kernel's receive timestamp
(SO_TIMESTAMPNS, CLOCK_REALTIME, shared by all namespaces). With `--unicast` it also
logs datagrams sent to that unicast address (the benchmark's baseline). With `--spec`
one process does this for many sites, each socket opened in its site's namespace.

`send` stands for the BMI's defence system: scapy builds each datagram (an IEC 104
APDU inside UDP, TTL 16 so that it may be routed) and sends it out of one interface
as a raw frame; one JSON line per datagram with the same hash.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import IO

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; not exported by every Python build


def join(sock: socket.socket, group: str, ifname: str) -> None:
    # ip_mreqn: group, local address (any), interface index.
    mreq = struct.pack("=4s4si", socket.inet_aton(group), socket.inet_aton("0.0.0.0"), socket.if_nametoindex(ifname))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)


def _socket(bind: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(bind)
    return sock


@dataclass
class _Site:
    """One site's sockets (opened in its namespace) and its log."""

    socks: list[tuple[socket.socket, str]]
    names: dict[int, str]  # ifindex -> name, in the site's namespace
    out: IO[str]


def _open_site(group: str, port: int, ifaces: str, unicast: str | None, out: str) -> _Site:
    socks = []
    mc = _socket((group, port))  # bound to the group: only that group's datagrams
    for ifname in ifaces.split(","):
        join(mc, group, ifname)
    socks.append((mc, "multicast"))
    if unicast:
        host, uport = unicast.rsplit(":", 1)
        socks.append((_socket((host, int(uport))), "unicast"))
    return _Site(socks, {idx: name for idx, name in socket.if_nameindex()}, open(out, "a", buffering=1))


_CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def receive(args: argparse.Namespace) -> int:
    """One process for every site: a socket keeps the network namespace it was made
    in, so the sockets are opened one namespace after the other (setns) and read
    together (100 sites would otherwise be 100 processes)."""
    sites = []
    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
        home = f"/proc/{os.getpid()}/ns/net"
        try:
            for site in spec:
                _setns(f"/run/netns/{site['netns']}")
                sites.append(_open_site(args.group, args.port, site["ifaces"], site.get("unicast"), site["out"]))
        finally:
            _setns(home)
    else:
        sites.append(_open_site(args.group, args.port, args.ifaces, args.unicast, args.out))
    socks = {sock.fileno(): (sock, kind, site) for site in sites for sock, kind in site.socks}
    print("receiver: ready", flush=True)
    while True:
        ready, _, _ = select.select(list(socks), [], [])
        for fd in ready:
            sock, kind, site = socks[fd]
            names, out = site.names, site.out
            data, anc, _flags, addr = sock.recvmsg(65535, 256)
            t_ns, ifname = None, None
            for level, typ, value in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("=qq", value[:16])
                    t_ns = sec * 1_000_000_000 + nsec
                elif level == socket.IPPROTO_IP and typ == IP_PKTINFO:
                    ifname = names.get(struct.unpack("=i", value[:4])[0])
            out.write(
                json.dumps(
                    {
                        "kind": kind,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "len": len(data),
                        "src": addr[0],
                        "sport": addr[1],
                        "iface": ifname,
                        "t_ns": t_ns,
                        "seq": int.from_bytes(data[6:10], "big") if len(data) >= 10 else None,
                    }
                )
                + "\n"
            )


def trip_payload(seq: int, size: int = 40) -> bytes:
    """An IEC 104 I-frame APDU (start 0x68, length, control field) whose bytes 6..9 carry
    `seq` and the rest random: any change on the way changes the hash."""
    body = seq.to_bytes(4, "big") + os.urandom(max(0, size - 10))
    return bytes([0x68, 4 + len(body), 0, 0, 0, 0]) + body


def send(args: argparse.Namespace) -> int:
    # Slow imports: only here.
    from scapy.arch import get_if_hwaddr
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.sendrecv import sendp

    octets = [int(x) for x in args.group.split(".")]
    # The group's MAC (RFC 1112): 01:00:5e + low 23 bits of the address.
    mac = f"01:00:5e:{octets[1] & 0x7F:02x}:{octets[2]:02x}:{octets[3]:02x}"
    frames, lines = [], []
    for i in range(args.count):
        seq = args.first + i
        data = trip_payload(seq)
        frames.append(
            Ether(dst=mac, src=get_if_hwaddr(args.iface))
            / IP(src=args.src, dst=args.group, ttl=args.ttl)
            / UDP(sport=args.sport, dport=args.port)
            / Raw(data)
        )
        lines.append(
            {
                "seq": seq,
                "sha256": hashlib.sha256(data).hexdigest(),
                "len": len(data),
                "src": args.src,
                "sport": args.sport,
                "iface": args.iface,
            }
        )
    with open(args.out, "a") as out:
        for frame, line in zip(frames, lines, strict=True):
            sendp(frame, iface=args.iface, verbose=False)
            line["t_ns"] = time.time_ns()
            out.write(json.dumps(line) + "\n")
            if args.interval:
                time.sleep(args.interval)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.trip_peers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--group", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--ifaces")
    r.add_argument("--unicast")
    r.add_argument("--out")
    r.add_argument("--spec", help="JSON list of {netns, ifaces, out[, unicast]}: one process for many sites")
    s = sub.add_parser("send")
    s.add_argument("--group", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--src", required=True)
    s.add_argument("--sport", type=int, default=40000)
    s.add_argument("--iface", required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--first", type=int, default=0)
    s.add_argument("--ttl", type=int, default=16)
    s.add_argument("--interval", type=float, default=0.0)
    s.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return receive(args) if args.cmd == "receive" else send(args)


if __name__ == "__main__":
    sys.exit(main())
