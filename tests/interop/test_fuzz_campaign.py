"""The fuzz campaign of bench/fuzz_campaign.py at CI size (bench/FUZZ.md has the 1,000,000
frame run): 20,000 mutated frames on each side, split at random byte boundaries, against
the relay as its own process while 12 good sites stream."""

from __future__ import annotations

from bench.fuzz_campaign import campaign, check_order
from tests.peers.codec_peers import CodecMaster, QueueingStation, counter_asdu


async def test_20000_mutated_frames_per_side_cost_the_good_sites_nothing():
    result = await campaign(20_000)
    print(f"\n{result}")
    assert result["relay_exits"] == 0
    for side in ("site_side", "bmi_side"):
        assert result[side]["frames"] >= 20_000
        assert result[side]["closed_by_relay"] >= 5  # the destructive mutations did end connections
    assert result["good_asdus"] > 12 * 100  # the good sites streamed throughout
    assert result["lost"] == result["duplicated"] == result["reordered"] == 0
    assert result["good_sites_confirmed_all"]
    assert result["good_site_connections"] == [1.0]  # no good site was ever disconnected
    assert result["log_tracebacks"] == 0
    assert result["relay_after"]["peak_rss_mib"] < 100


def test_the_order_check_sees_loss_duplicates_and_reordering():
    stations = [QueueingStation(101), QueueingStation(102)]
    for station in stations:
        station._next_sequence = 4  # each sent counters 0..3
    master = CodecMaster()
    good = [counter_asdu(101, n) for n in range(4)] + [counter_asdu(102, n) for n in range(4)]
    master.received = [(0.0, asdu) for asdu in good]
    assert check_order(master, stations) == {"good_asdus": 8, "lost": 0, "duplicated": 0, "reordered": 0}
    master.received = [(0.0, counter_asdu(101, n)) for n in (0, 2, 1, 1)] + [(0.0, a) for a in good[4:]]
    assert check_order(master, stations) == {"good_asdus": 8, "lost": 1, "duplicated": 1, "reordered": 1}
