"""The HA lab's judgements (tests/netns/ha_lab.py), on made-up records: each must be
able to say NOT OK."""

from __future__ import annotations

from tests.netns.ha_lab import check_stream, outage, stale_overlaps


def test_check_stream_counts_loss_order_and_duplicates() -> None:
    clean = [(1, 0, 0.0), (1, 1, 0.1), (2, 1, 0.5), (2, 2, 0.6)]  # seq 1 sent again on a new connection
    assert check_stream(clean) == {
        "received": 3,
        "missing": 0,
        "out_of_order": 0,
        "duplicates": 1,
        "longest_duplicate_run": 1,
    }
    lost = [(1, 0, 0.0), (1, 2, 0.1)]
    assert check_stream(lost)["missing"] == 1
    swapped = [(1, 0, 0.0), (1, 2, 0.1), (1, 1, 0.2)]
    # out of order: the jump and the late one
    assert check_stream(swapped)["out_of_order"] == 2 and check_stream(swapped)["missing"] == 0


def test_outage_is_the_longest_gap_around_the_fault() -> None:
    rows = [(1, 101, i, t) for i, t in enumerate([0.0, 0.1, 0.2, 1.5, 1.6, 5.0])]
    assert abs(outage(rows, fault=0.25, window=2.0) - 1.3) < 1e-9
    try:
        outage(rows[:3], fault=0.25)
    except ValueError:
        pass
    else:
        raise AssertionError("no data after the fault must be an error, not an outage of 0")


def test_stale_overlaps_flags_a_connection_still_talking_after_a_newer_one_opened() -> None:
    dead = [
        {"site": 1, "conn": 1, "event": "open", "t": 0.0},
        {"site": 1, "conn": 2, "event": "open", "t": 5.0},
        {"site": 1, "conn": 1, "event": "close", "t": 5.2, "last_rx": 4.0},  # silent since before: fine
    ]
    assert stale_overlaps(dead) == []
    live = [
        {"site": 1, "conn": 1, "event": "open", "t": 0.0},
        {"site": 1, "conn": 2, "event": "open", "t": 5.0},
        {"site": 1, "conn": 1, "event": "close", "t": 6.0, "last_rx": 5.5},  # two relays talking
    ]
    assert stale_overlaps(live) == [live[2]]
    other_site = [
        {"site": 1, "conn": 1, "event": "open", "t": 0.0},
        {"site": 2, "conn": 2, "event": "open", "t": 5.0},
        {"site": 1, "conn": 1, "event": "close", "t": 6.0, "last_rx": 5.5},
    ]
    assert stale_overlaps(other_site) == []
