"""Issue 29 item 1: the relay's exporter process is a peer of whoever reaches the metrics
port, and bounds what each client may hold (monitoring/scrape_process.py, `Limits`).
Against the real exporter process, with short limits so that the tests are quick; the
full attack (3,000 connections while 12 sites stream through a relay) is
tests/interop/test_metrics_slowloris.py, its figures bench/SCRAPE.md."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import trio

from concentrator.config import Config, Endpoint
from concentrator.iec104.link import LinkParams
from concentrator.relay.core import RelayCore
from concentrator.relay.stats import RelayStats
from monitoring.exporter import RelayExporter, serve_relay
from monitoring.scrape_process import Limits
from tests.helpers import relay_config
from tests.monitoring.test_metrics import parse, value

HEAD = b"GET /metrics HTTP/1.1\r\nHost: test\r\n"


@contextmanager
def exporter(limits: Limits, sites: int = 1) -> Iterator[RelayExporter]:
    config = relay_config(list(range(20000, 20000 + sites)))
    stats = RelayCore(config.sites, LinkParams(), 0.0).stats
    served = trio.run(_serve, stats, config, limits)  # relay_clock() reads trio's clock: one short trio run
    try:
        yield served
    finally:
        served.close()


async def _serve(stats: RelayStats, config: Config, limits: Limits) -> RelayExporter:
    return serve_relay(stats, config, Endpoint("127.0.0.1", 0), limits)


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return str(response.read().decode())


def retrying(url: str, seconds: float = 10.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return scrape(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (FIN or RST) within `seconds`."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_snapshot_per_interval_however_many_clients_ask() -> None:
    with exporter(Limits(snapshot_interval=2.0)) as served:
        scrape(served.url)
        before = served.snapshots

        async def many() -> list[str]:
            bodies: list[str] = []
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(lambda: _append(bodies, served.url))
            return bodies

        started = time.monotonic()
        bodies = trio.run(many)
        elapsed = time.monotonic() - started
        assert len(bodies) == 40
        # At most one snapshot per interval begun (one, when the 40 took less than 2 s).
        assert served.snapshots - before <= 1 + elapsed // 2.0, elapsed
        time.sleep(2.0)
        scrape(served.url)
        assert served.snapshots > before  # and once the interval passed, a new one


async def _append(bodies: list[str], url: str) -> None:
    bodies.append(await trio.to_thread.run_sync(scrape, url))


def test_the_exporters_own_counters_are_as_of_the_scrape_not_of_the_snapshot() -> None:
    """The relay's stats may be up to a snapshot interval old; what this process counted
    itself is not: a connection closed a moment ago is in the next answer. (They once
    came with the snapshot, and a CI run scraped 0 refusals just after one.)"""
    with exporter(Limits(snapshot_interval=3600.0)) as served:
        scrape(served.url)  # the snapshot every later answer shares
        with socket.create_connection((served.host, served.port)) as wrong:
            wrong.sendall(b"POST /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            wrong.settimeout(5)
            answer = b""
            while chunk := wrong.recv(4096):  # to the close, which comes after the count
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 405")
        samples = parse(scrape(served.url))
        closed = partial(value, samples, "concentrator_exporter_closed_connections_total")
        assert closed(outcome="bad_request") == 1
        assert closed(outcome="answered") == 1  # the first scrape; this one is counted after its answer
        assert value(samples, "concentrator_exporter_snapshots_total") == 1


def test_a_request_head_not_finished_in_time_is_closed_and_a_whole_one_is_answered() -> None:
    with exporter(Limits(header_timeout=0.5)) as served:
        with socket.create_connection((served.host, served.port)) as slow:
            slow.sendall(HEAD)  # never the blank line
            started = time.monotonic()
            assert closed_within(slow, 5.0)
            assert 0.4 < time.monotonic() - started < 4.5
        with socket.create_connection((served.host, served.port)) as whole:
            whole.sendall(HEAD + b"\r\n")
            whole.settimeout(5)
            assert whole.recv(1024).startswith(b"HTTP/1.1 200 OK")
        samples = parse(scrape(served.url))
        assert value(samples, "concentrator_exporter_closed_connections_total", outcome="head_timeout") == 1


def test_an_oversized_request_head_is_refused() -> None:
    with exporter(Limits(max_head=1024)) as served:
        with socket.create_connection((served.host, served.port)) as big:
            try:
                big.sendall(HEAD + b"X-Long: " + b"a" * 4096 + b"\r\n\r\n")
            except ConnectionResetError:
                pass
            assert closed_within(big, 5.0)


def slow_client(served: RelayExporter, source: str) -> socket.socket:
    """A connection from `source` that sent the start of a request head, never the end."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((served.host, served.port))
    sock.sendall(HEAD[:5])
    return sock


def test_half_open_connections_are_never_accepted() -> None:
    with exporter(Limits(max_connections=8)) as served:
        half_open = [socket.create_connection((served.host, served.port)) for _ in range(500)]
        try:
            time.sleep(1.0)  # time for the exporter to accept them, if it would
            samples = parse(scrape(served.url))
            assert value(samples, "concentrator_exporter_connections") == 1  # this scrape
            assert sum(v for (name, _), v in samples.items() if name.startswith("concentrator_exporter_closed")) == 0
            assert threads(served.process.pid) == 1
        finally:
            for sock in half_open:
                sock.close()


def test_connections_are_bounded_and_the_oldest_unfinished_request_makes_room() -> None:
    """Slow requests from 200 addresses (one each, so that the per-address limit does not
    apply): 8 held at most, and a scraper is answered every time."""
    with exporter(Limits(max_connections=8, header_timeout=60.0)) as served:
        slow = [slow_client(served, f"127.0.1.{n + 1}") for n in range(200)]
        try:
            for _ in range(3):
                samples = parse(scrape(served.url))
            assert value(samples, "concentrator_exporter_connections") <= 8
            assert value(samples, "concentrator_exporter_closed_connections_total", outcome="dropped_for_room") >= 190
            assert threads(served.process.pid) == 1  # one trio loop, whatever the clients
            still_open = sum(not closed_within(sock, 0.01) for sock in slow)
            assert still_open <= 8
        finally:
            for sock in slow:
                sock.close()


def test_every_open_connection_being_answered_refuses_a_new_one() -> None:
    """The other side of making room: a connection whose request is in is never dropped
    for a newcomer (here 2 that do not read the answer of 100 sites, about 700 kB); the
    newcomer is refused. Once they are gone, a scrape answers again."""
    with exporter(Limits(max_connections=2, send_timeout=30.0), sites=100) as served:
        readers = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((served.host, served.port))
            sock.sendall(HEAD + b"\r\n")
            readers.append(sock)
        time.sleep(1.0)  # both answers started, and stuck in full socket buffers
        with socket.create_connection((served.host, served.port)) as newcomer:
            newcomer.sendall(HEAD + b"\r\n")
            assert closed_within(newcomer, 5.0)
        for sock in readers:
            sock.close()  # unread data: a reset, which the exporter meets when it next writes
        samples = parse(retrying(served.url))
        assert value(samples, "concentrator_exporter_closed_connections_total", outcome="refused_full") >= 1
        assert len(scrape(served.url)) > 500_000  # the answers that were stuck were this large


def test_a_client_that_leaves_is_met_with_silence(capfd: pytest.CaptureFixture[str]) -> None:
    """Request sent, then gone with a reset before the answer: the old exporter printed a
    BrokenPipe traceback for each one into the relay's log."""
    with exporter(Limits()) as served:
        for _ in range(200):
            with socket.create_connection((served.host, served.port)) as sock:
                sock.sendall(HEAD + b"\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # (While 64 of those are being answered, a newcomer is refused: hence the retries.)
        retrying(served.url)
        time.sleep(1.0)  # time for the exporter to meet the last resets
        samples = parse(retrying(served.url))
        closed = partial(value, samples, "concentrator_exporter_closed_connections_total")
        assert closed(outcome="client_gone") > 0
        # Met one way or another: answered (the answer fitted in the socket before the
        # reset came), gone, or reset while 64 others were being answered.
        assert closed(outcome="client_gone") + closed(outcome="answered") + closed(outcome="refused_full") >= 200
        pid = served.process.pid
        assert os.path.exists(f"/proc/{pid}")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "Error" not in out + err


def test_one_address_holds_at_most_max_per_peer_unfinished_requests() -> None:
    """A slowloris from one host (127.0.0.2) keeps at most 4 places, its other
    connections are reset at once; a scraper elsewhere (127.0.0.1) is never dropped."""
    with exporter(Limits(max_connections=8, max_per_peer=4, header_timeout=60.0)) as served:
        attackers = [slow_client(served, "127.0.0.2") for _ in range(100)]
        try:
            with socket.create_connection((served.host, served.port)) as slow_scraper:
                slow_scraper.sendall(HEAD)  # not finished yet: it waits among the attackers
                attackers += [slow_client(served, "127.0.0.2") for _ in range(100)]
                slow_scraper.sendall(b"\r\n")
                slow_scraper.settimeout(5)
                assert slow_scraper.recv(1024).startswith(b"HTTP/1.1 200 OK")
            still_open = sum(not closed_within(sock, 0.01) for sock in attackers)
            assert still_open == 4
            samples = parse(scrape(served.url))
            closed = partial(value, samples, "concentrator_exporter_closed_connections_total")
            assert closed(outcome="refused_peer") == 196 and closed(outcome="dropped_for_room") == 0
        finally:
            for sock in attackers:
                sock.close()
