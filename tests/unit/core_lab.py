"""A `RelayCore` wired to sans-I/O peers: UPDCs with lib60870's queue semantics and BMI
connections whose confirmations the test decides. Bytes move only when a test says so,
so any interleaving of the two directions of any connection can be produced.

The peers are `Link` objects (the same codec on both ends, but separate state), and the
lab records what the invariants need: what each BMI connection received and confirmed
(and whether that confirmation reached the relay), what each UPDC had confirmed.

UPDCs answer a broadcast clock synchronisation as lib60870 does (the received ASDU back
as its confirmation, CA 65535 kept) and can be told to send such a confirmation
unsolicited. The lab marks each with its station (originator address) and sequence
number (in the time tag), counts the broadcast activations the relay wrote on each site
connection, and checks that no connection had more answers forwarded than that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from concentrator.config import Endpoint, SiteConfig
from concentrator.iec104.errors import Cause
from concentrator.iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    DataTransferStopped,
    Link,
    LinkFailed,
    LinkParams,
    Role,
    State,
)
from concentrator.relay.core import Close, ConnectSite, ConnId, RelayCore, SiteConn, TimerAt, Transmit
from tests.peers.codec_peers import counter_asdu, counter_of, with_cause

BASE_CA = 101
CLOCK_SYNC = 103


def clock_sync_broadcast(stamp: int) -> bytes:
    """C_CS_NA_1 activation to CA 65535 (the stamp in the time tag's first octets)."""
    return bytes((CLOCK_SYNC, 1, 6, 0, 0xFF, 0xFF, 0, 0, 0)) + stamp.to_bytes(4, "little") + bytes(3)


def is_sync_activation(asdu: bytes) -> bool:
    return asdu[0] == CLOCK_SYNC and asdu[2] & 0x3F == 6 and asdu[4:6] == b"\xff\xff"


def ident(asdu: bytes) -> tuple[int, int]:
    """(CA of the station that sent it, its sequence number) of an ASDU from a lab UPDC:
    a broadcast answer is marked with its station (originator) and sequence (time tag)."""
    if asdu[4:6] == b"\xff\xff":
        return BASE_CA + asdu[3] - 1, int.from_bytes(asdu[9:13], "little")
    return counter_of(asdu)


def site_config(n: int, params: LinkParams) -> SiteConfig:
    return SiteConfig(f"site-{n + 1:02d}", (BASE_CA + n,), (Endpoint("127.0.0.1", 1),), "A", params)


class InvariantBroken(AssertionError):
    pass


@dataclass
class Station:
    """A UPDC: keeps each ASDU until confirmed; on a lost connection the unconfirmed ones
    go back to waiting and leave again on the next started connection (lib60870)."""

    index: int
    ca: int
    link: Link | None = None
    conn: ConnId | None = None
    waiting: deque[int] = field(default_factory=deque)  # sequence numbers
    unconfirmed: deque[int] = field(default_factory=deque)
    generated: int = 0
    confirmed: set[int] = field(default_factory=set)
    resent_after_loss: set[int] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)  # from the BMI, through the relay
    answers: dict[int, bytes] = field(default_factory=dict)  # sequence -> broadcast answer sent as it
    sent_on: dict[int, ConnId] = field(default_factory=dict)  # answer sequence -> connection it left on

    def asdu(self, seq: int) -> bytes:
        return self.answers.get(seq) or counter_asdu(self.ca, seq)


@dataclass
class Bmi:
    """One BMI connection (controlling station, confirming only when told)."""

    conn: ConnId
    link: Link
    open: bool = True
    received: list[bytes] = field(default_factory=list)
    confirmed_upto: int = 0  # how many of `received` it confirmed


class Lab:
    def __init__(self, sites: int = 3, site_k: int = 4, uplink: LinkParams | None = None) -> None:
        self.now = 0.0
        self.site_params = LinkParams(k=site_k, w=max(1, site_k * 2 // 3))
        self.uplink_params = uplink or LinkParams(k=6, w=4)
        self.core = RelayCore([site_config(n, self.site_params) for n in range(sites)], self.uplink_params, 0.0)
        self.stations = [Station(n, BASE_CA + n) for n in range(sites)]
        self.bmis: list[Bmi] = []
        self.by_conn: dict[ConnId, Station | Bmi] = {}
        self.to_core: dict[ConnId, bytearray] = {}
        self.to_peer: dict[ConnId, bytearray] = {}
        self.connect_at: dict[int, float] = {}  # site index -> when the core wants it connected
        self.closed_by_core: list[tuple[ConnId, Cause]] = []
        # Invariant records.
        self.bmi_confirmed: set[tuple[int, int]] = set()  # (CA, seq) whose confirmation reached the relay
        self.seen_up: dict[int, int] = {}  # CA -> highest new sequence seen at the BMI
        self.duplicates = 0
        self.broadcasts_written: dict[ConnId, int] = {}  # site connection -> broadcast activations
        self.answers_forwarded: dict[ConnId, set[tuple[int, int]]] = {}  # site connection -> answers at the BMI
        self.core.start(0.0)
        self.collect()

    # ------------------------------------------------------------------ plumbing
    def collect(self) -> None:
        core = self.core
        while (action := core.next_action()) is not None:
            if isinstance(action, Transmit):
                self.to_peer[action.conn] += action.data
                for record, read_at in action.forwarded:  # as the driver does once written
                    record(self.now - read_at)
                if isinstance(self.by_conn.get(action.conn), Station):
                    self._count_broadcasts(action.conn, action.data)
            elif isinstance(action, Close):
                self.closed_by_core.append((action.conn, action.cause))
                # Written bytes still reach the peer before the FIN.
                self.deliver_to_peer(action.conn)
                self._peer_lost(action.conn)
            elif isinstance(action, ConnectSite):
                self.connect_at[action.site] = action.at
            else:
                assert isinstance(action, TimerAt)

    def _count_broadcasts(self, conn: ConnId, data: bytes) -> None:
        at = 0
        while at < len(data):
            frame = data[at : at + 2 + data[at + 1]]
            if not frame[2] & 1 and is_sync_activation(frame[6:]):
                self.broadcasts_written[conn] = self.broadcasts_written.get(conn, 0) + 1
            at += len(frame)

    def _add(self, conn: ConnId, peer: Station | Bmi) -> None:
        self.by_conn[conn] = peer
        self.to_core[conn] = bytearray()
        self.to_peer[conn] = bytearray()

    def _peer_lost(self, conn: ConnId) -> None:
        peer = self.by_conn.pop(conn, None)
        self.to_core.pop(conn, None)
        self.to_peer.pop(conn, None)
        if isinstance(peer, Station):
            peer.link, peer.conn = None, None
            peer.resent_after_loss.update(peer.unconfirmed)
            peer.waiting.extendleft(reversed(peer.unconfirmed))
            peer.unconfirmed.clear()
        elif isinstance(peer, Bmi):
            peer.open = False

    def _peer_out(self, conn: ConnId, link: Link) -> None:
        self.to_core[conn] += link.data_to_send()

    # ------------------------------------------------------------------ site side
    def connect_site(self, index: int) -> bool:
        station = self.stations[index]
        if station.link is not None or self.connect_at.get(index, float("inf")) > self.now:
            return False
        del self.connect_at[index]
        conn = self.core.site_connected(index, "127.0.0.1:1", self.now)
        station.link, station.conn = Link(Role.CONTROLLED, self.site_params, now=self.now), conn
        self._add(conn, station)
        self.collect()
        return True

    def refuse_site(self, index: int) -> bool:
        if self.stations[index].link is not None or self.connect_at.get(index, float("inf")) > self.now:
            return False
        del self.connect_at[index]
        self.core.site_connect_failed(index, self.now)
        self.collect()
        return True

    def answer(self, station: Station, broadcast: bytes) -> None:
        """The UPDC confirms a broadcast clock sync, lib60870's way (CA 65535 kept)."""
        seq = station.generated
        station.generated += 1
        answer = with_cause(broadcast, 7)
        station.answers[seq] = (
            answer[:3] + bytes((station.index + 1,)) + answer[4:9] + seq.to_bytes(4, "little") + answer[13:]
        )
        station.waiting.append(seq)
        self._station_pump(station)

    def generate(self, index: int, count: int) -> None:
        station = self.stations[index]
        for _ in range(count):
            station.waiting.append(station.generated)
            station.generated += 1
        self._station_pump(station)

    def _station_pump(self, station: Station) -> None:
        link = station.link
        if link is None or station.conn is None:
            return
        while station.waiting and link.can_send:
            seq = station.waiting.popleft()
            link.send_asdu(station.asdu(seq), self.now)
            if seq in station.answers:
                station.sent_on[seq] = station.conn
            station.unconfirmed.append(seq)
        self._peer_out(station.conn, link)

    def _station_events(self, station: Station) -> None:
        link, conn = station.link, station.conn
        assert link is not None and conn is not None
        while (event := link.next_event()) is not None:
            if isinstance(event, Acknowledged):
                for _ in range(event.count):
                    seq = station.unconfirmed.popleft()
                    forwarded = seq not in station.answers or any(
                        (station.ca, seq) in answers for answers in self.answers_forwarded.values()
                    )  # a refused answer is confirmed in its turn, without the BMI
                    if forwarded and (station.ca, seq) not in self.bmi_confirmed:
                        raise InvariantBroken(f"site {station.ca} frame {seq} confirmed before the BMI confirmed it")
                    station.confirmed.add(seq)
            elif isinstance(event, AsduReceived):
                station.received.append(event.asdu)
                if is_sync_activation(event.asdu):
                    self.answer(station, event.asdu)
            elif isinstance(event, LinkFailed):
                self.drop(conn, event.cause)
                return
            elif isinstance(event, (DataTransferStarted, DataTransferStopped)):
                pass
        self._station_pump(station)

    # ------------------------------------------------------------------ BMI side
    def connect_bmi(self) -> Bmi | None:
        conn = self.core.uplink_accepted("10.0.0.1", self.now)
        self.collect()
        if conn is None:
            return None
        bmi = Bmi(conn, Link(Role.CONTROLLING, self.uplink_params, manual_ack=True, now=self.now))
        self.bmis.append(bmi)
        self._add(conn, bmi)
        return bmi

    def bmi_start(self, bmi: Bmi) -> None:
        if bmi.open and bmi.link.state is State.STOPPED:
            bmi.link.start(self.now)
            self._peer_out(bmi.conn, bmi.link)

    def bmi_stop(self, bmi: Bmi) -> None:
        if bmi.open and bmi.link.state is State.STARTED:
            bmi.link.stop(self.now)
            self._peer_out(bmi.conn, bmi.link)

    def bmi_send(self, bmi: Bmi, asdu: bytes) -> None:
        if bmi.open and bmi.link.can_send:
            bmi.link.send_asdu(asdu, self.now)
            self._peer_out(bmi.conn, bmi.link)

    def bmi_confirm(self, bmi: Bmi, count: int) -> None:
        """The BMI confirms `count` more of what it received, and the confirmation
        reaches the relay at once."""
        if not bmi.open:
            return
        count = min(count, len(bmi.received) - bmi.confirmed_upto)
        if count <= 0:
            return
        bmi.link.acknowledge(count, self.now)
        for asdu in bmi.received[bmi.confirmed_upto : bmi.confirmed_upto + count]:
            self.bmi_confirmed.add(ident(asdu))
        bmi.confirmed_upto += count
        self._peer_out(bmi.conn, bmi.link)
        self.deliver_to_core(bmi.conn)

    def _bmi_events(self, bmi: Bmi) -> None:
        while (event := bmi.link.next_event()) is not None:
            if isinstance(event, AsduReceived):
                self._check_up(event.asdu)
                bmi.received.append(event.asdu)
            elif isinstance(event, LinkFailed):
                self.drop(bmi.conn, event.cause)
                return

    def _check_up(self, asdu: bytes) -> None:
        """Per-site order with no gap; a duplicate only of a frame the BMI had not
        confirmed, or one its UPDC sent again itself after losing its connection."""
        if asdu[2] & 0x3F == 46:  # the relay's negative answer to an unknown CA
            return
        ca, seq = ident(asdu)
        station = self.stations[ca - BASE_CA]
        if seq in station.answers:
            self._check_answer(station, seq)
        highest = self.seen_up.get(ca, -1)
        if seq > highest:
            # Only refused broadcast answers may be missing in between.
            if any(skipped not in station.answers for skipped in range(highest + 1, seq)):
                raise InvariantBroken(f"site {ca}: frame {seq} after {highest}: gap or reordering")
            self.seen_up[ca] = seq
            return
        self.duplicates += 1
        if (ca, seq) in self.bmi_confirmed and seq not in station.resent_after_loss:
            raise InvariantBroken(f"site {ca}: frame {seq} sent again although the BMI had confirmed it")

    def _check_answer(self, station: Station, seq: int) -> None:
        """A broadcast-CA answer reached the BMI: its connection must have had a broadcast
        written for it (one for one)."""
        conn = station.sent_on[seq]
        forwarded = self.answers_forwarded.setdefault(conn, set())
        forwarded.add((station.ca, seq))
        if len(forwarded) > self.broadcasts_written.get(conn, 0):
            raise InvariantBroken(
                f"site {station.ca}: {len(forwarded)} broadcast answers forwarded from one connection, "
                f"{self.broadcasts_written.get(conn, 0)} broadcasts written to it"
            )

    # ------------------------------------------------------------------ both
    def deliver_to_core(self, conn: ConnId) -> None:
        data = self.to_core.get(conn)
        if data:
            chunk = bytes(data)
            data.clear()
            self.core.receive_data(conn, chunk, self.now)
            self.collect()

    def deliver_to_peer(self, conn: ConnId) -> None:
        data = self.to_peer.get(conn)
        peer = self.by_conn.get(conn)
        if not data or peer is None:
            return
        chunk = bytes(data)
        data.clear()
        if isinstance(peer, Station):
            assert peer.link is not None
            peer.link.receive_data(chunk, self.now)
            self._peer_out(conn, peer.link)
            self._station_events(peer)
        else:
            peer.link.receive_data(chunk, self.now)
            self._peer_out(conn, peer.link)
            self._bmi_events(peer)

    def drop(self, conn: ConnId, cause: Cause = Cause.PEER_CLOSED) -> None:
        """The connection ends under the relay (peer left, cable cut): bytes in transit
        are lost both ways."""
        if conn not in self.by_conn:
            return
        self._peer_lost(conn)
        self.core.connection_lost(conn, cause, "lab", self.now)
        self.collect()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        deadline = self.core.get_timer()
        if deadline is not None and deadline <= self.now:
            self.core.handle_timer(self.now)
            self.collect()
        for conn, peer in list(self.by_conn.items()):
            if conn not in self.by_conn:
                continue
            deadline = peer.link.get_timer() if peer.link is not None else None
            if deadline is not None and deadline <= self.now:
                peer.link.handle_timer(self.now)  # type: ignore[union-attr]
                self._peer_out(conn, peer.link)  # type: ignore[arg-type]
                if isinstance(peer, Station):
                    self._station_events(peer)
                else:
                    self._bmi_events(peer)

    def settle(self, rounds: int = 200) -> None:
        """Deliver everything both ways and let every open BMI connection confirm all it
        received, until nothing moves."""
        for _ in range(rounds):
            moved = False
            for conn in list(self.by_conn):
                if self.to_core.get(conn) or self.to_peer.get(conn):
                    moved = True
                    self.deliver_to_peer(conn)
                    self.deliver_to_core(conn)
            for bmi in self.bmis:
                if bmi.open and bmi.confirmed_upto < len(bmi.received):
                    moved = True
                    self.bmi_confirm(bmi, len(bmi.received) - bmi.confirmed_upto)
            if not moved:
                return
        raise InvariantBroken("still moving after settle()")

    # ------------------------------------------------------------------ invariants
    def check(self) -> None:
        core = self.core
        queue = core.queue
        if len(queue) < 0 or queue.in_flight < 0:
            raise InvariantBroken(f"negative queue counts: {len(queue)}, {queue.in_flight}")
        for conn in core.conns.values():
            if isinstance(conn, SiteConn) and conn.outstanding < 0:
                raise InvariantBroken(f"{conn.label}: {conn.outstanding} outstanding")
        live = [c for c in core.uplinks.values() if c.link.state in (State.STARTED, State.PENDING_UNCONFIRMED_STOPPED)]
        if len(live) > 1:
            raise InvariantBroken(f"{len(live)} started BMI connections")
        if live and core.active is not live[0]:
            raise InvariantBroken("the started BMI connection is not the active one")
        if core.active is not None:
            if core.active.id not in core.uplinks:
                raise InvariantBroken("the active connection is closed")
            if queue.in_flight != core.active.link.unacknowledged:
                raise InvariantBroken(
                    f"{queue.in_flight} frames in flight in the queue, {core.active.link.unacknowledged} on the link"
                )
        elif queue.in_flight or len(queue):
            raise InvariantBroken("frames queued with no active connection")
        for station in self.stations:
            kept = set(station.waiting) | set(station.unconfirmed)
            for seq in range(station.generated):
                # A broadcast answer may be refused: the ack check covers those forwarded.
                if seq not in kept and seq not in station.answers and (station.ca, seq) not in self.bmi_confirmed:
                    raise InvariantBroken(f"site {station.ca} frame {seq} lost")
