"""Random bytes from a peer never raise out of the link or the relay core: they end that
connection with a cause, and every other connection keeps its state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from concentrator.iec104.apci import UFunction, encode_i, encode_s, encode_u
from concentrator.iec104.link import Link, LinkFailed, LinkParams, Role, State

from .core_lab import Lab

# Valid frames mixed with garbage, so that the fuzzer gets past the framing checks.
frames = st.one_of(
    st.binary(max_size=40),
    st.builds(encode_u, st.sampled_from(list(UFunction))),
    st.builds(encode_s, st.integers(0, 32767)),
    st.builds(encode_i, st.integers(0, 32767), st.integers(0, 32767), st.binary(min_size=1, max_size=30)),
)
chunks = st.lists(frames, max_size=20).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(role=st.sampled_from(list(Role)), data=st.lists(chunks, max_size=5), manual=st.booleans())
def test_link_turns_any_bytes_into_events(role, data, manual):
    link = Link(role, LinkParams(k=4, w=2), manual_ack=manual and role is Role.CONTROLLING)
    for n, chunk in enumerate(data):
        link.receive_data(chunk, float(n))
        while (event := link.next_event()) is not None:
            if isinstance(event, LinkFailed):
                assert link.state is State.CLOSED
        link.handle_timer(float(n) + 0.5)
        link.data_to_send()


@settings(max_examples=300, deadline=None)
@given(data=st.lists(chunks, min_size=1, max_size=5), from_site=st.booleans())
def test_core_survives_any_bytes_from_one_connection_and_only_that_one_ends(data, from_site):
    lab = Lab(2)
    lab.connect_site(0)
    lab.connect_site(1)
    bmi = lab.connect_bmi()
    assert bmi is not None
    lab.bmi_start(bmi)
    lab.settle()
    target = lab.stations[0].conn if from_site else bmi.conn
    assert target is not None
    for chunk in data:
        if target not in lab.core.conns:
            break
        lab.core.receive_data(target, chunk, lab.now)
        lab.collect()
        lab.check()
    if from_site and lab.core.active is not None:
        assert lab.core.sites[1].conn is not None  # the other site is untouched
