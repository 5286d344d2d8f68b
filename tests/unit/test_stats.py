from concentrator.relay.stats import LATENCY_BUCKETS, SiteStats
from monitoring.primitives import Histogram


def test_time_in_state_counts_the_current_state_too():
    stats = SiteStats("s", (101,), state_since=100.0)
    stats.set_state("connecting", 101.0)
    stats.set_state("started", 101.5)
    assert stats.seconds_in_states(110.0) == {
        "disconnected": 1.0,
        "connecting": 0.5,
        "connected": 0.0,
        "started": 8.5,
    }


def test_histogram_buckets_from_10_microseconds_to_1_second():
    histogram = Histogram(LATENCY_BUCKETS)
    for value in (5e-6, 10e-6, 11e-6, 0.9, 2.0):
        histogram.observe(value)
    assert LATENCY_BUCKETS[0] == 10e-6 and LATENCY_BUCKETS[-1] == 1.0
    assert histogram.counts[0] == 2  # <= 10 µs, upper bounds inclusive as in Prometheus
    assert histogram.counts[1] == 1
    assert histogram.counts[-2] == 1 and histogram.counts[-1] == 1  # <= 1 s, then +Inf
    assert histogram.count == 5


def test_records_by_type_and_cause():
    stats = SiteStats("s", (101,))
    asdu = bytes((36, 1, 0x03, 0, 101, 0))
    stats.record_up(asdu)
    stats.record_up(bytes((36, 1, 0x43, 0, 101, 0)))  # cause 3 with the P/N bit
    assert stats.asdus_up_by_kind == {(36, 3): 2} and stats.bytes_up == 12


def test_kinds_a_peer_chooses_are_counted_apart_up_to_a_limit_then_as_other():
    from concentrator.relay.stats import KIND_LIMIT, OTHER_KIND

    stats = SiteStats("s", (101,))
    for type_id in range(256):  # a fuzzing peer: every type id, two causes
        for cause in (3, 20):
            stats.record_up(bytes((type_id, 1, cause, 0, 101, 0)))
            stats.record_down(bytes((type_id, 1, cause, 0, 101, 0)))
    for counts in (stats.asdus_up_by_kind, stats.asdus_down_by_kind, stats.bytes_up_by_kind):
        assert len(counts) == KIND_LIMIT + 1
        assert counts[0, 3] > 0 and (255, 20) not in counts
    assert stats.asdus_up_by_kind[OTHER_KIND] == 512 - KIND_LIMIT
    assert sum(stats.asdus_up_by_kind.values()) == stats.asdus_up == 512
    stats.record_up(bytes((0, 1, 3, 0, 101, 0)))  # a pair seen before the limit still counts as itself
    assert stats.asdus_up_by_kind[0, 3] == 2
