"""Active path probe: ICMP echo through one interface, trio-driven.

Carrier events miss the silent failures (carrier up, traffic lost: a dead switch
port beyond the link, a filtering fault). Each path is probed on its own with an
ICMP echo every `interval` seconds from a raw socket bound to the path's interface
(SO_BINDTODEVICE), so the probe tests that path whatever the routing table says.
An answer is reported as soon as it arrives; a probe unanswered within its timeout
(adaptive, see ProbeSchedule) is a miss, and a miss is confirmed by probing again
at once.

ICMP echo was chosen over a UDP/TCP probe because every router and host answers
it in the kernel without a listening process (the far end may be the operator's
router), and echo replies are not subject to the kernel's ICMP rate limit.
Raw sockets need root (or CAP_NET_RAW), which the link manager has anyway to
change routes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address

import trio

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0

_next_ident = os.getpid() & 0xFF00


def internet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ICMP, and of TCP over its pseudo-header."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"netd-probe") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = internet_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[IPv4Address, int, int] | None:
    """(source, ident, seq) of an IPv4 packet carrying an echo reply, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    icmp_type, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
    if icmp_type != ICMP_ECHO_REPLY:
        return None
    return IPv4Address(packet[12:16]), ident, seq


def _new_ident() -> int:
    global _next_ident
    _next_ident = (_next_ident + 1) & 0xFFFF
    return _next_ident


Report = Callable[[bool, float], Awaitable[None]]  # (answered, now)

# A probe's answer is awaited srtt + 4 rttvar (as TCP's RTO, RFC 6298), at least this
# long and at most one interval: on a LAN a lost answer is known after MIN_TIMEOUT
# instead of a whole interval, on a slow backup (4G) the wait grows with its RTT.
MIN_TIMEOUT = 0.03


class ProbeSchedule:
    """When to send the next probe and how long to wait for its answer (no I/O).

    Steady state: one probe per `interval`. After a miss the next probe leaves at
    once, so that `misses` misses in a row are confirmed within about
    misses x timeout of the first one rather than misses x interval: the switch then
    lands before the TCP senders' first retransmission timeout (200 ms), which is
    what the outage seen by the BMI hinges on (bench/FAILOVER.md). Once the path is
    declared down the cadence returns to one probe per interval.
    """

    def __init__(self, interval: float, misses: int, min_timeout: float = MIN_TIMEOUT) -> None:
        self.interval = interval
        self.misses = misses
        self.min_timeout = min(min_timeout, interval)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.consecutive_misses = 0

    def timeout(self) -> float:
        if self.srtt is None:
            return self.interval
        return min(self.interval, max(self.min_timeout, self.srtt + 4 * self.rttvar))

    def answered(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.consecutive_misses = 0

    def missed(self) -> None:
        self.consecutive_misses += 1

    def next_send(self, sent_at: float, now: float) -> float:
        if 0 < self.consecutive_misses < self.misses:
            return now  # confirm at once
        # Never try to catch up after a stall: the cadence restarts from now.
        return max(sent_at + self.interval, now)


def _answer_waiting(raw: socket.socket, expected: tuple[IPv4Address, int, int]) -> bool:
    """Whether the expected echo reply is already in the socket's queue (read without
    waiting: the probe's deadline has passed)."""
    while True:
        try:
            packet = raw.recv(2048, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: nothing waiting
            return False
        if parse_echo_reply(packet) == expected:
            return True


async def run_probe(
    interface: str,
    target: IPv4Address,
    interval: float,
    report: Report,
    misses: int = 3,
) -> None:
    """Probe forever; calls `report(True, now)` per answer, `report(False, now)` per miss."""
    ident = _new_ident()
    seq = 0
    sock: trio.socket.SocketType | None = None
    raw: socket.socket | None = None  # the same socket, for a read that must not wait
    schedule = ProbeSchedule(interval, misses)
    next_send = trio.current_time()
    try:
        while True:
            await trio.sleep_until(next_send)
            if sock is None:
                try:
                    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
                    sock = trio.socket.from_stdlib_socket(raw)
                except OSError:
                    # Interface missing (e.g. being re-created): counts as a miss.
                    sock = None
            seq = (seq + 1) & 0xFFFF
            sent_at = trio.current_time()
            deadline = sent_at + schedule.timeout()
            answered = False
            if sock is not None:
                try:
                    await sock.sendto(echo_request(ident, seq), (str(target), 0))
                except OSError as exc:
                    # ENETUNREACH / ENETDOWN while the link is down: a miss. ENODEV: the
                    # interface was deleted; bind a new socket to its successor next time.
                    if exc.errno in (errno.ENODEV, errno.ENXIO):
                        sock.close()
                        sock = None
                else:
                    with trio.move_on_at(deadline):
                        while True:
                            packet = await sock.recv(2048)
                            reply = parse_echo_reply(packet)
                            if reply is not None and reply == (target, ident, seq):
                                answered = True
                                now = trio.current_time()
                                schedule.answered(now - sent_at)
                                await report(True, now)
                                break
            if not answered and sock is not None and raw is not None and _answer_waiting(raw, (target, ident, seq)):
                # It came while this task waited for the CPU (a busy or starved netd); the
                # path answered. Its late reading goes into the RTT, so the timeout adapts.
                answered = True
                now = trio.current_time()
                schedule.answered(now - sent_at)
                await report(True, now)
            if not answered:
                await trio.sleep_until(deadline)
                schedule.missed()
                await report(False, trio.current_time())
            next_send = schedule.next_send(sent_at, trio.current_time())
    finally:
        if sock is not None:
            sock.close()
