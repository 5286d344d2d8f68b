"""TCP facts the HA supervisor needs, from the kernel, and the nudge that makes a BMI drop
a connection to a master that vanished.

When the master's links are cut, its connection with the BMI is dead but the BMI does
not know: it sends nothing until its t2 (10 s) or t3 (20 s) expires, and only then gets
a reset from the new master and reconnects (bench/HA.md: 10.2 s in one run). The new
master can make it find out at once. It knows the BMI's end of that connection (the
peer's status line lists them while the peer is active), and it holds the virtual
address(es) that the BMI's traffic to the relay's address goes to (the relay's address
itself, or the service address routed via them), so it sends the BMI a bare ACK "from"
that connection with a sequence number outside the window. The BMI's TCP answers an
unacceptable segment with an ACK (RFC 793 3.9; RFC 5961 4 calls it the challenge ACK),
which arrives at the new master; its kernel has no such connection, only the relay's
listener, and answers an ACK there with a reset whose sequence number is the BMI's own
acknowledgement: exactly in window, so the BMI drops the connection and reconnects to
the relay now listening.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

from netconfig.probe import internet_checksum

ESTABLISHED, LISTEN = "01", "0A"


def _address(hex_addr: str) -> tuple[str, int]:
    ip, port = hex_addr.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


def tcp_table(path: str = "/proc/net/tcp") -> list[tuple[tuple[str, int], tuple[str, int], str]]:
    """(local, remote, state) of every IPv4 TCP socket of this network namespace."""
    with open(path) as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [(_address(r[1]), _address(r[2]), r[3]) for r in rows if len(r) > 3]


def listening(host: str, port: int) -> bool:
    """Whether a socket listens on host:port here (no connection made to find out)."""
    return any(local == (host, port) and state == LISTEN for local, _, state in tcp_table())


def connected_peers(host: str, port: int) -> list[str]:
    """ "ip:port" of the peers with an established connection to host:port here."""
    return [f"{ip}:{p}" for local, (ip, p), state in tcp_table() if local == (host, port) and state == ESTABLISHED]


def bare_ack(source: tuple[str, int], destination: tuple[str, int], seq: int, ack: int) -> bytes:
    """A TCP segment with only ACK set and no data, checksum included."""
    header = struct.pack("!HHIIBBHHH", source[1], destination[1], seq, ack, 5 << 4, 0x10, 1024, 0, 0)
    pseudo = socket.inet_aton(source[0]) + socket.inet_aton(destination[0]) + struct.pack("!BBH", 0, 6, len(header))
    return header[:16] + struct.pack("!H", internet_checksum(pseudo + header)) + header[18:]


def nudge(local: tuple[str, int], peers: Iterable[str]) -> int:
    """Send each peer ("ip:port") a bare out-of-window ACK from `local` (an address held
    here); returns how many were sent. Needs CAP_NET_RAW."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
        sock.bind((local[0], 0))
        for peer in peers:
            host, _, port = peer.rpartition(":")
            seq, ack = struct.unpack("!II", os.urandom(8))
            try:
                sock.sendto(bare_ack(local, (host, int(port)), seq, ack), (host, 0))
                sent += 1
            except OSError:
                continue  # a peer we cannot reach now gets its reset from its own timers
    return sent
