from dataclasses import dataclass

import pytest

from concentrator.relay.uplink_queue import QueueError, UplinkQueue


@dataclass(eq=False)
class Site:
    name: str
    closed: bool = False


def test_fifo_in_flight_and_confirmation_release_per_origin():
    a, b = Site("a"), Site("b")
    queue: UplinkQueue[Site] = UplinkQueue()
    for n in range(3):
        queue.push(a, bytes([n]))
        queue.push(b, bytes([10 + n]))
    sent = [queue.take(now=2.0) for _ in range(4)]
    assert [item.asdu for item in sent if item] == [b"\x00", b"\x0a", b"\x01", b"\x0b"]
    assert queue.in_flight == 4 and len(queue) == 2
    assert [item.origin for item in queue.confirmed(3)] == [a, b, a]
    with pytest.raises(QueueError):
        queue.confirmed(2)


def test_requeue_puts_unconfirmed_first_in_original_order():
    a = Site("a")
    queue: UplinkQueue[Site] = UplinkQueue()
    for n in range(5):
        queue.push(a, bytes([n]))
    queue.take(0.0), queue.take(0.0), queue.take(0.0)
    queue.confirmed(1)
    queue.requeue_in_flight()
    assert queue.in_flight == 0
    assert [queue.take(1.0).asdu for _ in range(4)] == [b"\x01", b"\x02", b"\x03", b"\x04"]  # type: ignore[union-attr]


def test_closed_origin_drops_pending_keeps_in_flight_and_is_not_released():
    a, b = Site("a"), Site("b")
    queue: UplinkQueue[Site] = UplinkQueue()
    queue.push(a, b"\x01")
    queue.push(b, b"\x02")
    queue.push(a, b"\x03")
    queue.take(0.0)
    a.closed = True
    assert queue.discard_pending(a) == 1
    assert len(queue) == 1 and queue.in_flight == 1
    # The BMI's confirmation still counts a's frame in flight.
    assert [item.asdu for item in queue.confirmed(1)] == [b"\x01"]
    assert queue.take(0.0).asdu == b"\x02"  # type: ignore[union-attr]


def test_sites_take_turns_so_a_burst_does_not_hold_back_another_site():
    storm, other = Site("storm"), Site("other")
    queue: UplinkQueue[Site] = UplinkQueue()
    for n in range(100):
        queue.push(storm, bytes([n]))
    queue.push(other, b"\xff")  # e.g. a command confirmation
    taken = [queue.take(0.0) for _ in range(3)]
    assert [item.origin for item in taken if item] == [storm, other, storm]
    assert [item.asdu for item in taken if item and item.origin is storm] == [b"\x00", b"\x01"]
    assert len(queue) == 98


def test_requeued_frames_go_before_the_sites_newer_ones():
    a, b = Site("a"), Site("b")
    queue: UplinkQueue[Site] = UplinkQueue()
    queue.push(a, b"a1")
    queue.push(b, b"b1")
    queue.take(0.0), queue.take(0.0)  # a1, b1 in flight
    queue.push(b, b"b2")
    queue.push(a, b"a2")
    queue.requeue_in_flight()
    order = [queue.take(1.0).asdu for _ in range(4)]  # type: ignore[union-attr]
    assert order.index(b"a1") < order.index(b"a2") and order.index(b"b1") < order.index(b"b2")
    assert order[:2] == [b"a1", b"b1"]
    assert queue.take(1.0) is None and len(queue) == 0


def test_a_turn_of_several_frames_holds_another_site_back_by_at_most_that_many():
    storm, other = Site("storm"), Site("other")
    queue: UplinkQueue[Site] = UplinkQueue(turn=3)
    for n in range(10):
        queue.push(storm, bytes([n]))
    queue.push(other, b"\xff")
    queue.push(other, b"\xfe")
    taken = [item.asdu for _ in range(8) if (item := queue.take(0.0)) is not None]
    # storm's first turn (3 frames), then other's (both of its frames), then storm again.
    assert taken == [b"\x00", b"\x01", b"\x02", b"\xff", b"\xfe", b"\x03", b"\x04", b"\x05"]
    # The BMI confirms in sending order; each site's frames come out in arrival order.
    assert [item.origin for item in queue.confirmed(5)] == [storm, storm, storm, other, other]


def test_a_site_dropped_in_its_turn_does_not_shorten_the_next_sites_turn():
    a, b, c = Site("a"), Site("b"), Site("c")
    queue: UplinkQueue[Site] = UplinkQueue(turn=2)
    for n in range(3):
        queue.push(a, bytes([n]))
        queue.push(b, bytes([10 + n]))
        queue.push(c, bytes([20 + n]))
    queue.take(0.0)  # a's turn has begun
    queue.discard_pending(a)
    assert [queue.take(0.0).asdu for _ in range(2)] == [b"\x0a", b"\x0b"]  # type: ignore[union-attr]


def test_a_turn_is_at_least_one_frame():
    with pytest.raises(ValueError):
        UplinkQueue(turn=0)


def test_requeue_drops_the_frames_of_the_origin_it_is_told_and_keeps_the_rest_in_order() -> None:
    """Issue 29 item 4: on a hand-over the relay's answers to the old connection (origin
    `old`) are dropped; the sites' frames in flight go out again, first, in order."""
    old, site = Site("BMI a"), Site("site-01")
    queue: UplinkQueue[Site] = UplinkQueue()
    for n in range(3):
        queue.push(site, bytes([n]))
        queue.push(old, b"answer")
    for _ in range(4):
        queue.take(0.0)  # in flight: site 0, answer, site 1, answer
    assert queue.requeue_in_flight(drop=old) == 2
    assert queue.discard_pending(old) == 1  # the answer not yet sent
    assert [queue.take(0.0).asdu for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]  # type: ignore[union-attr]
    assert queue.take(0.0) is None
