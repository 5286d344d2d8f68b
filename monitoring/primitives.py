"""What the relay's and the link manager's metrics share; imports only the configuration primitives.

The relay (concentrator/relay/stats.py) and the link manager (netconfig/netd.py) keep
plain counters and `Histogram`s (concentrator/configbase.py, the bottom both may
import); their collectors (relay_metrics.py, linkmanager.py) render them under one name
`PREFIX` with `histogram_buckets`; `serve` publishes collectors over HTTP. Kept apart so
that the link manager, which must run without the relay, imports nothing of it
(tests/unit/test_imports.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from threading import Thread
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.registry import Collector

from concentrator.configbase import Histogram  # what the relay and netd count in

PREFIX = "concentrator_"


def histogram_buckets(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets ending with +Inf, and the sum, from a `Histogram`.

    The counts are copied first (one C-level list copy) so the buckets agree with each
    other; the count Prometheus shows is the +Inf bucket, so it agrees with them too.
    """
    counts = list(histogram.counts)
    total = histogram.total
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*histogram.bounds, math.inf), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
    return buckets, total


class Listen(Protocol):
    """Where to serve (a configuration's Endpoint)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: Thread
    registry: CollectorRegistry

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(collectors: Iterable[Collector], listen: Listen, *, process: bool = True) -> MetricsServer:
    """Start serving `collectors` (plus the process's CPU and memory) on `listen`.
    Port 0 picks a free port; read it back from `.port`."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    server, thread = start_http_server(listen.port, addr=listen.host, registry=registry)
    return MetricsServer(server, thread, registry)
