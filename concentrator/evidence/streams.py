"""From captured frames to the ASDUs each TCP connection carried, and the UDP datagrams.

Ethernet (and 802.1Q) / IPv4 or IPv6 / TCP: each direction of each connection is
reassembled by sequence number (retransmissions and frames seen twice are dropped,
segments out of order wait), then cut into APDUs by the relay's own framer
(`concentrator.iec104.apci.FrameReader`, used read-only). A connection that began
before the capture is joined at the first segment that starts an APDU; what could not
be decoded (a gap the capture missed, a framing error) is reported, never guessed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from concentrator.iec104.apci import I_KIND, FrameReader, FramingError

from .capture import Packet

Flow = tuple[str, int, str, int]  # src address, src port, dst address, dst port (one direction)


@dataclass(frozen=True, slots=True)
class Segment:
    t: float
    ifname: str
    outgoing: bool
    flow: Flow
    seq: int
    syn: bool
    fin_or_rst: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Datagram:
    t: float
    ifname: str
    outgoing: bool
    src: str
    sport: int
    dst: str
    dport: int
    ttl: int
    payload: bytes


def parse_frame(p: Packet) -> Segment | Datagram | None:
    """A TCP segment or UDP datagram in an Ethernet frame; None for anything else."""
    f = p.frame
    if len(f) < 14:
        return None
    at, ethertype = 14, int.from_bytes(f[12:14], "big")
    while ethertype in (0x8100, 0x88A8) and len(f) >= at + 4:
        ethertype, at = int.from_bytes(f[at + 2 : at + 4], "big"), at + 4
    if ethertype == 0x0800 and len(f) >= at + 20 and f[at] >> 4 == 4:
        ihl = (f[at] & 0x0F) * 4
        total = int.from_bytes(f[at + 2 : at + 4], "big")
        if int.from_bytes(f[at + 6 : at + 8], "big") & 0x3FFF:
            return None  # a fragment: IEC 104 and trip datagrams are never fragmented
        proto, ttl = f[at + 9], f[at + 8]
        src = str(ipaddress.IPv4Address(f[at + 12 : at + 16]))
        dst = str(ipaddress.IPv4Address(f[at + 16 : at + 20]))
        body = f[at + ihl : at + total] if total else f[at + ihl :]  # total 0: TSO frame
    elif ethertype == 0x86DD and len(f) >= at + 40:
        proto, ttl = f[at + 6], f[at + 7]
        src = str(ipaddress.IPv6Address(f[at + 8 : at + 24]))
        dst = str(ipaddress.IPv6Address(f[at + 24 : at + 40]))
        body = f[at + 40 : at + 40 + int.from_bytes(f[at + 4 : at + 6], "big")]
    else:
        return None
    if proto == 6 and len(body) >= 20:
        sport, dport = int.from_bytes(body[0:2], "big"), int.from_bytes(body[2:4], "big")
        offset, flags = (body[12] >> 4) * 4, body[13]
        return Segment(
            p.t,
            p.ifname,
            p.outgoing,
            (src, sport, dst, dport),
            int.from_bytes(body[4:8], "big"),
            bool(flags & 0x02),
            bool(flags & 0x05),
            bytes(body[offset:]),
        )
    if proto == 17 and len(body) >= 8:
        return Datagram(
            p.t,
            p.ifname,
            p.outgoing,
            src,
            int.from_bytes(body[0:2], "big"),
            dst,
            int.from_bytes(body[2:4], "big"),
            ttl,
            bytes(body[8:]),
        )
    return None


@dataclass(frozen=True, slots=True)
class Apdu:
    t: float  # when the segment completing it was captured
    flow: Flow
    conn: int  # number of the TCP connection (both directions share it)
    asdu: bytes


@dataclass
class _Direction:
    flow: Flow
    conn: int
    next_seq: int | None = None
    joined_mid_stream: bool = False
    pending: dict[int, tuple[float, bytes]] = field(default_factory=dict)
    reader: FrameReader = field(default_factory=FrameReader)
    aligned: bool = False  # a frame boundary was found (always at once after a SYN)
    skipped: int = 0  # octets before the first APDU boundary (mid-stream join)
    failed: str | None = None  # why decoding stopped
    segments: int = 0


@dataclass
class StreamProblem:
    flow: Flow
    what: str


@dataclass
class Streams:
    apdus: list[Apdu] = field(default_factory=list)
    problems: list[StreamProblem] = field(default_factory=list)
    connections: dict[Flow, int] = field(default_factory=dict)  # each direction -> connection number
    joined_mid_stream: int = 0  # directions whose start was before the capture
    segments: int = 0


_HALF = 1 << 31


def _after(a: int, b: int) -> int:
    """a - b modulo 2^32 as a signed distance."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= _HALF else d


class Reassembler:
    """Feed segments in capture order; `finish()` gives the APDUs and what went wrong."""

    def __init__(self, wanted: Callable[[Flow], bool]) -> None:
        self._wanted = wanted
        self._dirs: dict[Flow, _Direction] = {}
        self._conn_of: dict[tuple[Flow, int], int] = {}
        self._next_conn = 0
        self.out = Streams()

    def _direction(self, seg: Segment) -> _Direction:
        d = self._dirs.get(seg.flow)
        if d is not None and seg.syn and d.next_seq is not None and _after(seg.seq + 1, d.next_seq) != 0:
            self._close(d)  # a new connection on the same 4-tuple
            d = None
        if d is None:
            src, sport, dst, dport = seg.flow
            reverse = self._dirs.get((dst, dport, src, sport))
            if reverse is None:
                self._next_conn += 1
                conn = self._next_conn
            else:
                conn = reverse.conn
            d = _Direction(seg.flow, conn)
            self._dirs[seg.flow] = d
            self.out.connections[seg.flow] = conn
        return d

    def feed(self, seg: Segment) -> None:
        if not self._wanted(seg.flow):
            return
        d = self._direction(seg)
        self.out.segments += 1
        d.segments += 1
        if seg.syn:
            d.next_seq, d.aligned = (seg.seq + 1) & 0xFFFFFFFF, True
            return
        if not seg.payload or d.failed:
            return
        if d.next_seq is None:
            d.next_seq, d.joined_mid_stream = seg.seq, True
            self.out.joined_mid_stream += 1
        ahead = _after(seg.seq, d.next_seq)
        if ahead > 0:
            d.pending.setdefault(seg.seq, (seg.t, seg.payload))
            return
        data = seg.payload[-ahead:] if ahead < 0 else seg.payload
        if not data:
            return  # a retransmission, or the same frame seen on another interface
        self._take(d, seg.t, data)
        while d.pending and not d.failed and (expected := d.next_seq) is not None:
            nxt = min(d.pending, key=lambda s: _after(s, expected))
            if _after(nxt, expected) > 0:
                break
            t, payload = d.pending.pop(nxt)
            rest = payload[_after(expected, nxt) :]
            if rest:
                self._take(d, t, rest)

    def _take(self, d: _Direction, t: float, data: bytes) -> None:
        assert d.next_seq is not None  # set by the SYN or the first segment seen, before any data
        d.next_seq = (d.next_seq + len(data)) & 0xFFFFFFFF
        if not d.aligned:
            # Joined mid-stream: wait for a segment that starts with an APDU (the relay
            # and IEC 104 peers write whole APDUs, so nearly every segment does).
            if not _starts_apdus(data):
                d.skipped += len(data)
                return
            d.aligned = True
        d.reader.feed(data)
        try:
            while (raw := d.reader.next_raw()) is not None:
                if raw[0] == I_KIND:
                    self.out.apdus.append(Apdu(t, d.flow, d.conn, raw[3]))  # type: ignore[arg-type]
        except FramingError as exc:
            d.failed = f"framing error after {len(self.out.apdus)} APDUs: {exc}"
            self.out.problems.append(StreamProblem(d.flow, d.failed))

    def _close(self, d: _Direction) -> None:
        if d.pending and not d.failed and (expected := d.next_seq) is not None:
            missing = min(_after(s, expected) for s in d.pending)
            self.out.problems.append(
                StreamProblem(
                    d.flow, f"{missing} octets never captured (a gap): {len(d.pending)} later segments not decoded"
                )
            )
        if d.skipped and not d.aligned:
            self.out.problems.append(StreamProblem(d.flow, f"no APDU boundary found in {d.skipped} octets"))

    def finish(self) -> Streams:
        for d in self._dirs.values():
            self._close(d)
        return self.out


def _starts_apdus(data: bytes) -> bool:
    """Whether `data` begins with whole, valid APDUs up to its end (or a partial last one)."""
    reader = FrameReader()
    reader.feed(data)
    try:
        count = 0
        while reader.next_raw() is not None:
            count += 1
    except FramingError:
        return False
    return count > 0
