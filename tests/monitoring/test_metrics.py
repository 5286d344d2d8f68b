"""The exporter's collectors, read through prometheus_client's own text parser."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from dataclasses import dataclass, field

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from concentrator.config import Endpoint
from concentrator.relay.stats import LATENCY_BUCKETS, RelayStats, SiteStats
from concentrator.sidecar import Backoff
from monitoring.exporter import serve_relay
from monitoring.linkmanager import LinkManagerCollector, TripPathStats, outage_histogram
from monitoring.primitives import Histogram, serve
from monitoring.relay_metrics import RelayMetrics
from tests.helpers import relay_config, wait_for

M_ME_TF_1 = 36


def tf_asdu(qds: list[int], ca: int = 101) -> bytes:
    """M_ME_TF_1, SQ = 0, one object per quality descriptor."""
    objects = b"".join(bytes((n + 1, 0, 0)) + b"\x00\x00\x80\x3f" + bytes((q,)) + bytes(7) for n, q in enumerate(qds))
    return bytes((M_ME_TF_1, len(qds), 3, 0, ca & 0xFF, ca >> 8)) + objects


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, read by prometheus_client's own parser (which also
    rejects a malformed line or a family given twice)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name, tuple(sorted(s.labels.items()))
            assert key not in samples, f"sample given twice: {key}"
            samples[key] = s.value
    return samples


def scrape(*collectors: Collector | RelayMetrics) -> Samples:
    """What a scrape shows: RelayMetrics's exposition, other collectors through
    prometheus_client's generate_latest."""
    registry = CollectorRegistry(auto_describe=False)
    text = ""
    for collector in collectors:
        if isinstance(collector, RelayMetrics):
            text += collector.exposition().decode()
        else:
            registry.register(collector)
    return parse(text + generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@dataclass
class Rig:
    stats: RelayStats
    clock: list[float]
    collector: RelayMetrics

    def site(self, name: str = "site-01") -> SiteStats:
        return self.stats.sites[name]


@pytest.fixture
def rig() -> Rig:
    config = relay_config([2404, 2405], site={"endpoints": ["127.0.0.1:2404", "127.0.0.2:2404"]})
    stats = RelayStats()
    for site in config.sites:
        stats.sites[site.name] = SiteStats(site.name, site.common_addresses, state_since=100.0)
    clock = [100.0]
    return Rig(stats, clock, RelayMetrics(stats, config, lambda: clock[0]))


def test_time_in_each_state_is_a_counter_that_includes_the_current_state(rig: Rig) -> None:
    rig.site().set_state("connecting", 101.0)
    rig.site().set_state("started", 101.5)
    rig.clock[0] = 110.0
    s = scrape(rig.collector)
    assert value(s, "concentrator_site_state_seconds_total", site="site-01", state="disconnected") == 1.0
    assert value(s, "concentrator_site_state_seconds_total", site="site-01", state="connecting") == 0.5
    assert value(s, "concentrator_site_state_seconds_total", site="site-01", state="started") == 8.5
    assert value(s, "concentrator_site_state_seconds_total", site="site-02", state="disconnected") == 10.0
    assert value(s, "concentrator_site_up", site="site-01") == 1
    assert value(s, "concentrator_site_up", site="site-02") == 0
    assert value(s, "concentrator_site_state", site="site-01", state="started") == 1
    assert value(s, "concentrator_site_state", site="site-01", state="connected") == 0


def test_invalid_quality_and_time_since_the_last_measurement(rig: Rig) -> None:
    site = rig.site()
    s = scrape(rig.collector)
    assert value(s, "concentrator_site_seconds_since_last_measurement", site="site-01") == 0.0
    site.record_up(tf_asdu([0x00, 0x80, 0x81]), now=103.0)
    site.record_up(tf_asdu([0x10]), now=104.0)  # NT only: not invalid
    site.record_up(bytes((M_ME_TF_1, 2, 3, 0, 101, 0)) + bytes(5), now=105.0)  # malformed, still relayed
    site.record_up(bytes((30, 1, 3, 0, 101, 0)) + bytes(11), now=106.0)  # a signal, not a measurement
    rig.clock[0] = 110.0
    s = scrape(rig.collector)
    assert value(s, "concentrator_site_measured_values_total", site="site-01") == 4
    assert value(s, "concentrator_site_invalid_measured_values_total", site="site-01") == 2
    assert value(s, "concentrator_site_malformed_measurement_asdus_total", site="site-01") == 1
    assert value(s, "concentrator_site_seconds_since_last_measurement", site="site-01") == 6.0
    assert value(s, "concentrator_site_seconds_since_last_measurement", site="site-02") == 10.0
    assert value(s, "concentrator_site_asdus_total", site="site-01", direction="up", type_id="36", cause="3") == 3
    assert value(s, "concentrator_site_asdus_total", site="site-01", direction="up", type_id="30", cause="3") == 1
    assert value(s, "concentrator_site_asdu_bytes_total", site="site-01", direction="up", type_id="30", cause="3") == 17


def test_latency_is_a_prometheus_histogram_from_10_microseconds_to_1_second(rig: Rig) -> None:
    for latency in (5e-6, 30e-6, 30e-6, 0.2, 3.0):
        rig.site().record_forwarded(latency)
    rig.site().record_down(bytes((46, 1, 6, 0, 101, 0)) + bytes(4))
    rig.site().record_latency_down(40e-6)
    s = scrape(rig.collector)
    name = "concentrator_site_relay_latency_seconds"
    up = {"site": "site-01", "direction": "up"}
    assert value(s, f"{name}_bucket", **up, le="1e-05") == 1
    assert value(s, f"{name}_bucket", **up, le="5e-05") == 3
    assert value(s, f"{name}_bucket", **up, le="1.0") == 4
    assert value(s, f"{name}_bucket", **up, le="+Inf") == 5 == value(s, f"{name}_count", **up)
    assert value(s, f"{name}_sum", **up) == pytest.approx(3.200065)
    assert value(s, f"{name}_count", site="site-01", direction="down") == 1
    les = {labels for (n, labels) in s if n == f"{name}_bucket" and ("site", "site-02") in labels}
    assert len(les) == 2 * (len(LATENCY_BUCKETS) + 1)  # every bucket, both directions, even when empty
    assert value(s, "concentrator_site_asdus_total", site="site-01", direction="down", type_id="46", cause="6") == 1


def test_bmi_acknowledgement_delay_and_t1(rig: Rig) -> None:
    for delay in (0.3, 2.5, 14.0):
        rig.site().record_confirmed(delay)
    s = scrape(rig.collector)
    assert value(s, "concentrator_site_ack_delay_seconds_bucket", site="site-01", le="3.0") == 2
    assert value(s, "concentrator_site_ack_delay_seconds_count", site="site-01") == 3
    assert value(s, "concentrator_site_ack_delay_max_seconds", site="site-01") == 14.0
    assert value(s, "concentrator_site_t1_seconds", site="site-01") == 15.0
    assert value(s, "concentrator_uplink_t1_seconds") == 15.0


def test_endpoint_in_use_says_primary_or_backup(rig: Rig) -> None:
    site = rig.site()
    site.set_state("connected", 101.0)
    site.endpoint = "127.0.0.2:2404"
    s = scrape(rig.collector)
    assert value(s, "concentrator_site_endpoint_info", site="site-01", endpoint="127.0.0.2:2404", path="backup") == 1
    assert not [k for k in s if k[0] == "concentrator_site_endpoint_info" and ("site", "site-02") in k[1]]


def test_uplink_configuration_and_build_info(rig: Rig) -> None:
    uplink = rig.stats.uplink
    s = scrape(rig.collector)
    assert value(s, "concentrator_uplink_started") == 0
    assert not [k for k in s if k[0] == "concentrator_uplink_active_connection_info"]
    uplink.active_peer, uplink.activations, uplink.asdus_up, uplink.last_test_round_trip = "BMI 127.0.0.1", 1, 7, 0.002
    s = scrape(rig.collector)
    assert value(s, "concentrator_uplink_started") == 1
    assert value(s, "concentrator_uplink_active_connection_info", peer="BMI 127.0.0.1") == 1
    assert value(s, "concentrator_uplink_asdus_total", direction="up") == 7
    assert value(s, "concentrator_uplink_test_round_trip_seconds") == 0.002
    info = [dict(labels) for name, labels in s if name == "concentrator_config_info"]
    assert info == [{"file": "<test>", "sha256": ""}]
    assert [dict(labels)["version"] for name, labels in s if name == "concentrator_build_info"]


def test_a_scrape_waits_for_a_state_change_half_done() -> None:
    """A scrape reads the state, when it began and the totals while the relay's thread may
    be inside set_state(). Read half way through, the last interval would count twice and
    the next scrape would see the counter go down (a reset to Prometheus). (CPython 3.11
    does not switch threads inside set_state() today, so this pauses a writer by hand.)"""
    site = SiteStats("site-01", (101,), state_since=0.0)
    site.state_version += 1  # what set_state() does first...
    site.state_seconds["disconnected"] += 5.0  # ...then this, and the relay's thread stops here
    snapshots: list[tuple[str, float, dict[str, float]]] = []
    reader = threading.Thread(target=lambda: snapshots.append(site.state_snapshot()))
    reader.start()
    reader.join(0.1)
    assert reader.is_alive() and not snapshots, "read a half-changed state"
    site.state, site.state_since = "connecting", 5.0
    site.state_version += 1
    reader.join(5)
    totals = {"disconnected": 5.0, "connecting": 0.0, "connected": 0.0, "started": 0.0}
    assert snapshots == [("connecting", 5.0, totals)]
    assert site.state_version == 2


@dataclass
class FakeLink:
    active: str = "primary"
    all_down: bool = False
    healthy: dict[str, bool] = field(default_factory=lambda: {"primary": True, "backup": True})
    switches_by_reason: dict[str, int] = field(default_factory=dict)
    outage: Histogram = field(default_factory=outage_histogram)
    all_down_total: int = 0
    probe_answers_total: dict[str, int] = field(default_factory=lambda: {"primary": 0, "backup": 0})
    probe_misses_total: dict[str, int] = field(default_factory=lambda: {"primary": 0, "backup": 0})
    route_errors_total: int = 0


@dataclass
class FakeManager:
    ready: bool = True
    links: dict[str, FakeLink] = field(default_factory=dict)


def test_link_manager_and_trip_path_metrics() -> None:
    uplink = FakeLink(active="backup", healthy={"primary": False, "backup": True})
    uplink.switches_by_reason["probe-loss"] = 1
    uplink.outage.observe(0.35)
    uplink.probe_misses_total["primary"] = 3
    manager = FakeManager(links={"uplink": uplink, "site-01": FakeLink()})
    trip = TripPathStats(installed={"239.192.0.1": True, "239.192.0.2": False})
    s = scrape(LinkManagerCollector(manager, trip))
    assert value(s, "concentrator_linkmanager_ready") == 1
    assert value(s, "concentrator_link_active_path", link="uplink", path="backup") == 1
    assert value(s, "concentrator_link_active_path", link="uplink", path="primary") == 0
    assert value(s, "concentrator_link_path_healthy", link="uplink", path="primary") == 0
    assert value(s, "concentrator_link_switches_total", link="uplink", reason="probe-loss") == 1
    assert value(s, "concentrator_link_outage_seconds_bucket", link="uplink", le="0.3") == 0
    assert value(s, "concentrator_link_outage_seconds_bucket", link="uplink", le="1.0") == 1
    assert value(s, "concentrator_link_outage_seconds_count", link="site-01") == 0
    assert value(s, "concentrator_link_probe_misses_total", link="uplink", path="primary") == 3
    assert value(s, "concentrator_link_all_paths_down", link="uplink") == 0
    assert value(s, "concentrator_trip_path_installed", group="239.192.0.2") == 0


def test_the_link_managers_stats_have_what_the_collector_reads() -> None:
    """netconfig.netd.LinkStats (helper-3's) against monitoring.linkmanager.LinkView: every
    field but `outage`, the histogram the link manager still has to add (see README)."""
    netd = pytest.importorskip("netconfig.netd")
    link = netd.LinkStats("uplink")
    for name in ("active", "all_down", "healthy", "switches_by_reason", "all_down_total",
                 "probe_answers_total", "probe_misses_total", "route_errors_total"):  # fmt: skip
        assert hasattr(link, name), name
    assert hasattr(netd.NetdStats(), "links") and hasattr(netd.NetdStats(), "ready")


def test_link_manager_metrics_served_over_http_in_process() -> None:
    server = serve([LinkManagerCollector(FakeManager(links={"uplink": FakeLink()}))], Endpoint("127.0.0.1", 0))
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        assert 'concentrator_link_active_path{link="uplink",path="primary"} 1.0' in body
        assert "process_cpu_seconds_total" in body
    finally:
        server.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


async def test_the_relays_exporter_runs_in_its_own_process_from_snapshots() -> None:
    config = relay_config([2404])
    stats = RelayStats()
    site = stats.sites["site-01"] = SiteStats("site-01", (101,), state_since=trio.current_time())
    exporter = serve_relay(stats, config, Endpoint("127.0.0.1", 0))
    try:
        assert exporter.process.pid != os.getpid() and exporter.process.poll() is None
        s = parse(await trio.to_thread.run_sync(get, exporter.url))
        assert value(s, "concentrator_site_measured_values_total", site="site-01") == 0
        site.record_up(tf_asdu([0x80, 0x00]), trio.current_time())
        site.set_state("started", trio.current_time())
        await trio.sleep(1.0)  # Limits.snapshot_interval: within it, scrapes share one snapshot
        s = parse(await trio.to_thread.run_sync(get, exporter.url))
        assert value(s, "concentrator_site_invalid_measured_values_total", site="site-01") == 1
        assert value(s, "concentrator_site_up", site="site-01") == 1
        # CPU and memory are the relay's (this process's), not the exporter's.
        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert abs(value(s, "process_resident_memory_bytes") - resident) < resident / 2
    finally:
        exporter.close()
    assert exporter.process.returncode is not None


async def test_an_exporter_process_that_dies_is_started_again_on_the_same_port() -> None:
    """The sidecar's restart policy (tested once in tests/unit/test_sidecar.py) applied by
    the exporter: killed, it is back after the policy's delay, on the port the kernel
    chose for the first one, and close() stops the new one."""
    config = relay_config([2404])
    stats = RelayStats()
    stats.sites["site-01"] = SiteStats("site-01", (101,), state_since=trio.current_time())
    exporter = serve_relay(stats, config, Endpoint("127.0.0.1", 0), policy=Backoff(first=0.2))
    try:
        url, first = exporter.url, exporter.process
        assert "concentrator_site_up" in await trio.to_thread.run_sync(get, url)
        first.kill()
        await wait_for(lambda: exporter.process is not first and exporter.process.poll() is None, 10, "a new process")
        assert exporter.url == url and exporter.policy.restarts == 1
        assert "concentrator_site_up" in await trio.to_thread.run_sync(get, url)
    finally:
        exporter.close()
    assert exporter.process.returncode is not None and first.returncode is not None


async def test_the_relays_exporter_reports_an_address_it_cannot_listen_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_relay(RelayStats(), relay_config([2404]), Endpoint("127.0.0.1", port))


def test_buffers_against_their_budgets_per_site_and_uplink(rig: Rig) -> None:
    from concentrator.relay.stats import Buffers
    from concentrator.relay.windows import budget

    quiet = scrape(rig.collector)
    limit = budget(12)  # the default k
    assert value(quiet, "concentrator_site_send_budget_bytes", site="site-01") == limit
    assert value(quiet, "concentrator_uplink_receive_budget_bytes") == limit
    assert value(quiet, "concentrator_uplink_send_buffer_bytes") == 0
    assert value(quiet, "concentrator_site_disconnects_total", site="site-01", cause="send_budget_exceeded") == 0
    # A site that stopped reading, and two BMI connections: the largest buffer is shown.
    rig.site().buffers = Buffers(limit, 4000, limit, 100)
    rig.stats.uplink.buffers = {1: Buffers(limit, 10, limit, 0), 2: Buffers(limit, 700, limit, 3)}
    rig.site().disconnects["send_budget_exceeded"] += 1
    busy = scrape(rig.collector)
    assert value(busy, "concentrator_site_send_buffer_bytes", site="site-01") == 4000
    assert value(busy, "concentrator_site_receive_buffer_bytes", site="site-01") == 100
    assert value(busy, "concentrator_site_send_buffer_bytes", site="site-02") == 0
    assert value(busy, "concentrator_uplink_send_buffer_bytes") == 700
    assert value(busy, "concentrator_uplink_receive_buffer_bytes") == 3
    assert value(busy, "concentrator_site_disconnects_total", site="site-01", cause="send_budget_exceeded") == 1


def test_kinds_beyond_the_limit_are_exported_as_other(rig: Rig) -> None:
    from concentrator.relay.stats import KIND_LIMIT

    for type_id in range(KIND_LIMIT + 5):
        rig.site().record_up(bytes((type_id, 1, 3, 0, 101, 0)))
    samples = scrape(rig.collector)
    kinds = [k for k in samples if k[0] == "concentrator_site_asdus_total" and ("site", "site-01") in k[1]]
    assert len(kinds) == KIND_LIMIT + 1
    other = {"site": "site-01", "direction": "up", "type_id": "other", "cause": "other"}
    assert value(samples, "concentrator_site_asdus_total", **other) == 5
