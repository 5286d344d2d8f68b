"""A broker behind a link of about 1 kB/s: the mirror falls behind, its staleness metric
says by how much, and a real Prometheus with monitoring/alerts.yml fires
ConcentratorMirrorStale."""

from __future__ import annotations

import struct
from pathlib import Path

import trio

from concentrator.config import Endpoint
from concentrator.mirror.queue import MirrorQueue
from concentrator.relay.stats import RelayStats
from monitoring.exporter import serve_relay
from tests.helpers import relay_config, wait_for
from tests.monitoring.test_prometheus import firing, prometheus

from .broker import Broker
from .test_delivery import CP56, mirror_process

RATE = 1000  # bytes per second, each way
TICK = 0.1


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    """Forward at RATE: at most RATE * TICK octets per TICK."""
    try:
        while data := await source.receive_some(int(RATE * TICK)):
            await sink.send_all(data)
            await trio.sleep(TICK)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(sink)


async def slow_link(port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP proxy on loopback to 127.0.0.1:port that carries about RATE octets/s each way."""

    async def handle(client: trio.SocketStream) -> None:
        broker = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, broker)
            nursery.start_soon(_pump, broker, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def measurement(ioa: int, value: float) -> bytes:
    """M_ME_TF_1, periodic, CA 101: one QoS 0 message of about 400 octets."""
    return bytes((36, 1, 1, 0, 101, 0)) + ioa.to_bytes(3, "little") + struct.pack("<f", value) + b"\x00" + CP56


STALENESS = "concentrator_mirror_oldest_unpublished_age_seconds"


async def sites(queue: MirrorQueue) -> None:
    """10 measurements a second: about 4 kB/s to publish."""
    n = 0
    while True:
        n += 1
        queue.push(measurement(1000 + n % 16, float(n)), "site-01", trio.current_time())
        await trio.sleep(0.1)


async def test_a_slow_broker_link_shows_as_staleness_and_the_alert_fires(broker: Broker, tmp_path: Path):
    async with trio.open_nursery() as nursery:
        proxy_port = await nursery.start(slow_link, broker.port)
        # The mirror reaches the broker only through the slow link.
        async with mirror_process(broker, broker=f"127.0.0.1:{proxy_port}", keepalive=60) as (queue, stats):
            # The relay's own exporter process, over the live statistics.
            exporter = serve_relay(RelayStats(mirror=stats), relay_config([2404]), Endpoint("127.0.0.1", 0))
            try:
                with prometheus(tmp_path, {"concentrator": exporter.port}) as prom:
                    await prom.ready()
                    await wait_for(lambda: stats.connected, 30, "the mirror connected through the slow link")
                    nursery.start_soon(sites, queue)
                    await prom.wait(STALENESS, lambda v: v.get("", 0) > 10, "staleness above 10 s", timeout=60)
                    output = ""
                    with trio.move_on_after(60):
                        while not firing(output, "ConcentratorMirrorStale"):
                            output = await trio.to_thread.run_sync(prom.promtool_query, "ALERTS")
                            await trio.sleep(0.5)
                    assert firing(output, "ConcentratorMirrorStale"), output
                    # Slow is not broken: connected, publishing, nothing refused or lost.
                    assert stats.connected and stats.sent_unconfirmable > 0
                    assert stats.refused == {} and stats.lost == {}
                    print(
                        f"\nstaleness {prom.values(STALENESS)}, published {stats.sent_unconfirmable}, queued "
                        f"{stats.queue_length} + {stats.child_queue_length}, in flight {stats.in_flight}"
                    )
            finally:
                exporter.close()
        nursery.cancel_scope.cancel()
