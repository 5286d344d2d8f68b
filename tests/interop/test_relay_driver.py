"""The trio driver's I/O only (decisions are the core's, tests/unit/test_relay_core*.py):
the os.read/os.write rounds over a real socket.socketpair(), the wait for writability
when the socket is full, order of bytes, how a connection's end reaches the core, and
that a round serves every ready connection before the rest of one's burst."""

from __future__ import annotations

import contextlib
import socket

import trio

from concentrator.iec104.apci import UFrame, UFunction, decode, encode_u
from concentrator.relay.driver import Connection, Relay
from tests.helpers import relay_config


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (socketpair() is AF_UNIX, which has no reset)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return accepted, client


async def serve_pair(nursery: trio.Nursery, tcp: bool = False) -> tuple[Relay, Connection, trio.socket.SocketType]:
    relay = Relay(relay_config([1]))  # the site is never connected: core.start() is not called
    relay._nursery = nursery
    ours, theirs = tcp_pair() if tcp else socket.socketpair()
    ours.setblocking(False)
    conn_id = relay.core.uplink_accepted("127.0.0.1", trio.current_time())
    assert conn_id is not None
    relay._serve(conn_id, trio.socket.from_stdlib_socket(ours))
    nursery.start_soon(relay._rounds)
    return relay, relay._connections[conn_id], trio.socket.from_stdlib_socket(theirs)


async def test_fast_path_reads_and_answers_over_a_socketpair():
    async with trio.open_nursery() as nursery:
        relay, connection, peer = await serve_pair(nursery)
        await peer.send(encode_u(UFunction.STARTDT_ACT) + encode_u(UFunction.TESTFR_ACT))
        with trio.fail_after(5):
            data = b""
            while len(data) < 12:
                data += await peer.recv(100)
        assert [decode(data[:6]), decode(data[6:])] == [UFrame(UFunction.STARTDT_CON), UFrame(UFunction.TESTFR_CON)]
        assert relay.core.active is not None
        nursery.cancel_scope.cancel()


async def test_a_full_socket_waits_for_writability_and_keeps_the_order():
    async with trio.open_nursery() as nursery:
        _, connection, peer = await serve_pair(nursery)
        first = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffers take
        second = b"\x68" * 100_000
        connection.buffers.send_budget = 1 << 30  # order only here; the budget has its own test below
        connection.send(first)
        assert connection._unsent  # os.write took only part of it
        connection.send(second)  # queued behind the rest, never written ahead of it
        received = bytearray()
        with trio.fail_after(10):
            while len(received) < len(first) + len(second):
                received += await peer.recv(1 << 16)
        assert bytes(received) == first + second
        assert not connection._unsent
        nursery.cancel_scope.cancel()


async def test_peer_closing_reaches_the_core_with_its_cause():
    async with trio.open_nursery() as nursery:
        relay, connection, peer = await serve_pair(nursery)
        peer.close()
        with trio.fail_after(5):
            while relay.core.uplinks:
                await trio.sleep(0.01)
        assert relay.stats.uplink.disconnects["peer_closed"] == 1
        assert connection.id not in relay._connections
        nursery.cancel_scope.cancel()


async def test_a_reset_connection_reaches_the_core_as_a_connection_error():
    async with trio.open_nursery() as nursery:
        relay, _, peer = await serve_pair(nursery, tcp=True)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # linger 0: a reset
        with trio.fail_after(5):
            while relay.core.uplinks:
                await trio.sleep(0.01)
        assert relay.stats.uplink.disconnects == {"connection_error": 1}
        nursery.cancel_scope.cancel()


async def test_the_core_closing_a_connection_closes_the_socket():
    async with trio.open_nursery() as nursery:
        relay, connection, peer = await serve_pair(nursery)
        await peer.send(b"\x00\x01\x02")  # not an APDU: the core closes the connection
        with trio.fail_after(5):
            assert await peer.recv(100) == b""
        assert relay.stats.uplink.disconnects["bad_frame"] == 1
        assert connection.id not in relay._connections
        nursery.cancel_scope.cancel()


async def test_a_peer_that_floods_without_reading_is_closed_at_its_receive_budget():
    async with trio.open_nursery() as nursery:
        relay, connection, peer = await serve_pair(nursery)
        # TESTFR acts, never reading the confirmations: they pile up in the relay.
        flood = encode_u(UFunction.TESTFR_ACT) * 10_000
        with trio.fail_after(20):
            while relay.core.uplinks:
                try:
                    view = memoryview(flood)
                    while view:  # whole frames only: a partial send would cut one
                        view = view[await peer.send(view) :]
                except OSError:
                    break  # the relay closed the connection
                await trio.sleep(0)
        # Its answers wait unread, so the relay stops reading it; it goes on sending.
        assert relay.stats.uplink.disconnects == {"receive_budget_exceeded": 1}
        assert len(connection._unsent) <= connection.buffers.send_budget
        nursery.cancel_scope.cancel()


async def test_what_the_peer_leaves_unread_is_bounded_by_its_send_budget():
    async with trio.open_nursery() as nursery:
        relay, connection, peer = await serve_pair(nursery, tcp=True)
        chunk = encode_u(UFunction.TESTFR_CON) * 500  # answers the peer never reads
        buffered = []
        with trio.fail_after(20):
            while connection.id in relay._connections:
                connection.send(chunk)
                relay._act()
                buffered.append(connection.buffers.send_buffered)
                await trio.sleep(0)
        budget = connection.buffers.send_budget
        assert relay.stats.uplink.disconnects == {"send_budget_exceeded": 1}
        assert 0 < max(buffered) <= budget + len(chunk)  # the gauge rose to the budget, not past it
        with trio.fail_after(5):  # a closed connection leaves no gauge behind, once its task ended
            while relay.stats.uplink.buffers:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_round_serves_every_ready_connection_before_the_rest_of_a_burst():
    """Fairness across connections: one peer's burst (10,000 TESTFR acts, several reads and
    turns of FRAMES_PER_TURN frames) is handled in rounds, and a peer ready at the same time
    is answered in the first of them, not after the whole burst."""
    async with trio.open_nursery() as nursery:
        relay, busy, busy_peer = await serve_pair(nursery)
        busy.buffers.send_budget = 1 << 20  # the burst's answers (60 kB) are read after the check
        conn_id = relay.core.uplink_accepted("127.0.0.1", trio.current_time())
        assert conn_id is not None
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        relay._serve(conn_id, trio.socket.from_stdlib_socket(ours))
        quiet_peer = trio.socket.from_stdlib_socket(theirs)
        burst = 10_000
        # Both sends land before the relay's next round: blocking sends, no await between.
        busy_sock, quiet_sock = busy_peer._sock, quiet_peer._sock
        for sock in (busy_sock, quiet_sock):
            sock.setblocking(True)
        busy_sock.sendall(encode_u(UFunction.TESTFR_ACT) * burst)
        quiet_sock.sendall(encode_u(UFunction.TESTFR_ACT))
        for sock in (busy_sock, quiet_sock):
            sock.setblocking(False)
        with trio.fail_after(5):
            answer = await quiet_peer.recv(100)
        assert decode(answer) == UFrame(UFunction.TESTFR_CON)
        answered = b""
        with contextlib.suppress(BlockingIOError):  # what the relay wrote to the busy peer so far
            while chunk := busy_sock.recv(1 << 20):
                answered += chunk
        assert 0 < len(answered) // 6 < burst / 2, len(answered) // 6  # the quiet peer did not wait for the burst
        with trio.fail_after(10):  # and the whole burst is answered
            while len(answered) < 6 * burst:
                answered += await busy_peer.recv(1 << 20)
        assert answered == encode_u(UFunction.TESTFR_CON) * burst
        nursery.cancel_scope.cancel()
