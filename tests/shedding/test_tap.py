"""The relay's side: the bounded tap reports what it dropped and when; the feeder numbers
the copies, keeps the recent ones for a restarted monitor, and says from when its ring is
complete."""

from __future__ import annotations

import time

import trio

from concentrator.config import Endpoint
from concentrator.shedding.config import SheddingConfig
from concentrator.shedding.tap import DROPPED, DROPPED_BODY, ShedFeeder, ShedTap
from concentrator.sidecar import decode as decode_records
from tests.shedding.test_monitor import SITES


def decode(frames: list[bytes]) -> list[tuple[int, str, bytes, float]]:
    out = []
    for frame in frames:
        (record,) = decode_records(frame)  # one whole record per frame, nothing left over
        out.append((record.seq, record.site, record.body, record.when))
    return out


def test_a_full_tap_drops_the_oldest_and_the_feeder_reports_how_many_and_when() -> None:
    async def main() -> None:
        tap = ShedTap(frozenset({"a"}), limit=3)
        feeder = ShedFeeder(SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), 4.0, 3, SITES), tap)
        now = trio.current_time()
        offset = time.time() - now
        for k in range(5):
            tap.up("a", bytes([k]), now + k)
        tap.up("elsewhere", b"x", now)  # not a monitored site: not copied
        assert (tap.dropped, tap.entries[0][1]) == (2, b"\x02")
        frames = decode(feeder._frames())
        assert [(seq, site, asdu) for seq, site, asdu, _ in frames[:3]] == [(1, "a", b"\x02"), (2, "a", b"\x03"),
                                                                            (3, "a", b"\x04")]  # fmt: skip
        seq, site, body, _ = frames[3]
        count, first, last = DROPPED_BODY.unpack(body)
        assert (seq, site, count) == (4, DROPPED, 2)
        assert abs(first - (now + offset)) < 0.01 and abs(last - (now + 1 + offset)) < 0.01
        assert feeder._frames() == [] and tap.dropped_span is None  # reported once
        # The ring is bounded like the tap: the first copy left it, so the ring is complete
        # only from that copy's time on.
        assert [seq for seq, _, _ in feeder.ring] == [2, 3, 4]
        assert abs(feeder.complete_from - (now + 2 + offset)) < 0.01

    trio.run(main)


def test_the_ring_keeps_the_recent_copies_and_says_from_when_it_is_complete() -> None:
    async def main() -> None:
        tap = ShedTap(frozenset({"a"}), limit=1000)
        feeder = ShedFeeder(SheddingConfig("unused", 60, Endpoint("127.0.0.1", 0), 4.0, 1000, SITES), tap)
        assert feeder.replay_window == 1.5 * 4.0 + 10.0
        feeder.complete_from = time.time() - 100  # a feeder running for 100 s
        now = trio.current_time()
        tap.up("a", b"old", now - 30)  # older than the window: sent, not kept
        tap.up("a", b"new", now - 1)
        feeder._frames()
        assert [frame[-3:] for _, _, frame in feeder.ring] == [b"new"]
        # Every copy after the one evicted is in the ring: a restarted monitor can tell.
        assert abs(feeder.complete_from - (time.time() - 30)) < 0.1
        assert feeder.next_seq == 3

    trio.run(main)
