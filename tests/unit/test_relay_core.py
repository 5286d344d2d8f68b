"""The relay core's decisions, one by one, with no socket and no sleep (core_lab.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from concentrator.config import ConfigError, parse_config
from concentrator.iec104.errors import Cause, ConcentratorError
from concentrator.iec104.link import LinkParams, State
from concentrator.relay.core import RETRY_MAX, RETRY_MIN, ConnectSite, RelayCore, SiteConn
from concentrator.relay.uplink_queue import QueueError
from concentrator.relay.windows import idle_tolerant_w, window_problems, window_warnings
from tests.peers.codec_peers import counter_asdu, counter_of

from .core_lab import BASE_CA, Lab, site_config


def started_lab(sites: int = 2, site_k: int = 4, uplink: LinkParams | None = None) -> tuple[Lab, object]:
    lab = Lab(sites, site_k, uplink)
    for n in range(sites):
        assert lab.connect_site(n)
    bmi = lab.connect_bmi()
    assert bmi is not None
    lab.bmi_start(bmi)
    lab.settle()
    assert all(s.link is not None and s.link.state is State.STARTED for s in lab.stations)
    return lab, bmi


def test_sites_start_only_once_a_bmi_connection_is_started():
    lab = Lab(2)
    lab.connect_site(0)
    lab.settle()
    assert lab.stations[0].link.state is State.STOPPED  # type: ignore[union-attr]
    bmi = lab.connect_bmi()
    lab.bmi_start(bmi)  # type: ignore[arg-type]
    lab.settle()
    assert lab.stations[0].link.state is State.STARTED  # type: ignore[union-attr]
    assert lab.core.sites[0].stats.state == "started"


def test_a_site_frame_is_confirmed_to_the_site_only_after_the_bmi_confirmed_it():
    lab, bmi = started_lab()
    lab.generate(0, 3)
    lab.deliver_to_core(lab.stations[0].conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert len(bmi.received) == 3  # type: ignore[attr-defined]
    lab.deliver_to_peer(lab.stations[0].conn)  # type: ignore[arg-type]
    assert list(lab.stations[0].unconfirmed) == [0, 1, 2]
    lab.bmi_confirm(bmi, 2)  # type: ignore[arg-type]
    lab.deliver_to_peer(lab.stations[0].conn)  # type: ignore[arg-type]
    assert list(lab.stations[0].unconfirmed) == [2] and lab.stations[0].confirmed == {0, 1}
    lab.check()


def test_switch_away_and_back_closes_each_superseded_connection_and_loses_nothing():
    """Issue 10 item 1: B started, A takes the role, B takes it back, with frames in
    flight each time. The old core kept the superseded connection and counted its late
    confirmation against the new one's frames ('8 confirmed, only 7 in flight')."""
    lab, b = started_lab(uplink=LinkParams(k=8, w=6))
    a = lab.connect_bmi()
    for n in range(2):
        lab.generate(n, 4)
    for station in lab.stations:
        lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(b.conn)  # type: ignore[attr-defined]
    assert len(b.received) == 8 and lab.core.queue.in_flight == 8  # type: ignore[attr-defined]
    lab.bmi_start(a)  # type: ignore[arg-type]
    lab.deliver_to_core(a.conn)  # type: ignore[union-attr]
    assert lab.core.active is not None and lab.core.active.id == a.conn  # type: ignore[union-attr]
    assert (b.conn, Cause.SUPERSEDED) in lab.closed_by_core and not b.open  # type: ignore[attr-defined]
    assert lab.core.stats.uplink.requeued == 8
    lab.deliver_to_peer(a.conn)  # type: ignore[union-attr]
    resent = [counter_of(x) for x in a.received]  # type: ignore[union-attr]
    assert sorted(resent) == sorted(counter_of(x) for x in b.received)  # type: ignore[attr-defined]
    for ca in (BASE_CA, BASE_CA + 1):  # each site's frames again in their order
        assert [seq for c, seq in resent if c == ca] == [0, 1, 2, 3]
    # Straight back: a new connection from the same BMI host starts and A is closed.
    b2 = lab.connect_bmi()
    lab.bmi_confirm(a, 3)  # type: ignore[arg-type]
    lab.bmi_start(b2)  # type: ignore[arg-type]
    lab.deliver_to_core(b2.conn)  # type: ignore[union-attr]
    assert (a.conn, Cause.SUPERSEDED) in lab.closed_by_core  # type: ignore[union-attr]
    lab.settle()
    lab.check()
    assert all(not s.unconfirmed and not s.waiting for s in lab.stations)
    assert lab.core.stats.uplink.disconnects == {"superseded": 2}


def test_a_hand_over_carries_the_sites_data_over_but_not_the_relays_answers_to_the_old_connection():
    """Issue 29 item 4: A, started, sends commands for an unknown CA and reads none of the
    answers; B takes the role. The sites' unconfirmed data goes to B, in order; the
    relay's cause-46 answers to A's commands (in flight and not yet sent) do not: B never
    sent those commands. On main B received all of them."""
    lab, a = started_lab(uplink=LinkParams(k=8, w=6))
    for n in range(20):
        lab.bmi_send(a, counter_asdu(999, n))  # type: ignore[arg-type]
        lab.deliver_to_core(a.conn)  # type: ignore[attr-defined]
        lab.deliver_to_peer(a.conn)  # type: ignore[attr-defined]  # its commands acknowledged, no answer confirmed
    lab.generate(0, 3)
    lab.deliver_to_core(lab.stations[0].conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(a.conn)  # type: ignore[attr-defined]
    answers_to_a = [x for x in a.received if x[2] & 0x3F == 46]  # type: ignore[attr-defined]
    assert answers_to_a and lab.core.queue.in_flight == 8 and len(lab.core.queue) > 0  # in flight and waiting
    b = lab.connect_bmi()
    lab.bmi_start(b)  # type: ignore[arg-type]
    lab.deliver_to_core(b.conn)  # type: ignore[union-attr]
    assert (a.conn, Cause.SUPERSEDED) in lab.closed_by_core  # type: ignore[attr-defined]
    lab.settle()
    assert [x for x in b.received if x[2] & 0x3F == 46] == []  # type: ignore[union-attr]
    assert [counter_of(x) for x in b.received] == [(BASE_CA, 0), (BASE_CA, 1), (BASE_CA, 2)]  # type: ignore[union-attr]
    assert lab.core.stats.uplink.negative_answers == 20
    assert lab.core.stats.uplink.answers_dropped == 20  # A confirmed none of them
    lab.check()
    assert lab.stations[0].confirmed == {0, 1, 2}


def test_stopdt_from_the_active_bmi_waits_for_the_frames_in_flight():
    """Issue 10 item 2 on the uplink: STOPDT is confirmed only once the BMI confirmed the
    I-frames it had; those are released to their sites, then the sites are disconnected."""
    lab, bmi = started_lab()
    lab.generate(0, 2)
    lab.deliver_to_core(lab.stations[0].conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    lab.bmi_stop(bmi)  # type: ignore[arg-type]
    lab.deliver_to_core(bmi.conn)  # type: ignore[attr-defined]
    assert lab.core.active.link.state is State.PENDING_UNCONFIRMED_STOPPED  # type: ignore[union-attr]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert bmi.link.state is State.PENDING_STOPPED  # type: ignore[attr-defined]  # no STOPDT con yet
    lab.bmi_confirm(bmi, 2)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert bmi.link.state is State.STOPPED  # type: ignore[attr-defined]
    assert lab.core.active is None
    assert lab.stations[0].confirmed == {0, 1}  # released before the sites were closed
    assert {cause for _, cause in lab.closed_by_core} == {Cause.UPLINK_NOT_STARTED}


def test_a_late_confirmation_can_never_exceed_what_is_in_flight():
    core = RelayCore([site_config(0, LinkParams())], LinkParams(), 0.0)
    with pytest.raises(QueueError):
        core.queue.confirmed(1)
    assert issubclass(QueueError, ConcentratorError)


def test_unknown_ca_is_answered_negatively_and_broadcast_reaches_every_site_once():
    lab, bmi = started_lab(3)
    lab.bmi_send(bmi, counter_asdu(999, 1))  # type: ignore[arg-type]
    lab.bmi_send(bmi, counter_asdu(65535, 2))  # type: ignore[arg-type]
    lab.bmi_send(bmi, counter_asdu(BASE_CA + 1, 3))  # type: ignore[arg-type]
    lab.settle()
    (answer,) = bmi.received  # type: ignore[attr-defined]
    assert answer[2] & 0x3F == 46 and answer[2] & 0x40 and counter_of(answer) == (999, 1)
    assert [len(s.received) for s in lab.stations] == [1, 2, 1]
    assert lab.core.stats.uplink.negative_answers == 1


def test_a_site_frame_with_a_foreign_ca_is_not_forwarded_and_confirmed_in_its_turn():
    lab, bmi = started_lab()
    station = lab.stations[0]
    lab.generate(0, 1)  # seq 0, own CA
    station.link.send_asdu(counter_asdu(BASE_CA + 1, 77), lab.now)  # type: ignore[union-attr]  # another site's CA
    station.unconfirmed.append(-1)
    lab._peer_out(station.conn, station.link)  # type: ignore[arg-type]
    lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert [counter_of(x) for x in bmi.received] == [(BASE_CA, 0)]  # type: ignore[attr-defined]
    assert lab.core.sites[0].stats.foreign_ca == 1
    lab.deliver_to_peer(station.conn)  # type: ignore[arg-type]
    assert list(station.unconfirmed) == [0, -1]  # nothing confirmed before the BMI confirmed frame 0
    lab.bmi_confirm(bmi, 1)  # type: ignore[arg-type]
    lab.bmi_confirmed.add((BASE_CA, -1))  # the foreign frame rides on frame 0's confirmation
    lab.deliver_to_peer(station.conn)  # type: ignore[arg-type]
    assert not station.unconfirmed


def test_foreign_ca_closes_the_site_when_configured():
    core = RelayCore([site_config(0, LinkParams())], LinkParams(), 0.0, close_on_foreign_ca=True)
    lab = Lab.__new__(Lab)  # reuse the plumbing around a core built with the option
    Lab.__init__(lab, 1)
    lab.core = core
    core.start(0.0)
    lab.connect_at.clear()
    lab.collect()
    lab.connect_site(0)
    bmi = lab.connect_bmi()
    lab.bmi_start(bmi)  # type: ignore[arg-type]
    lab.settle()
    station = lab.stations[0]
    station.link.send_asdu(counter_asdu(555, 0), lab.now)  # type: ignore[union-attr]
    lab._peer_out(station.conn, station.link)  # type: ignore[arg-type]
    lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    assert lab.closed_by_core[-1][1] is Cause.FOREIGN_CA
    assert core.sites[0].stats.disconnects["foreign_ca"] == 1


def test_uplink_connections_beyond_the_ceiling_and_off_the_allowlist_are_refused():
    core = RelayCore([], LinkParams(), 0.0, allows=lambda peer: peer.startswith("10."), max_uplinks=2)
    assert core.uplink_accepted("192.0.2.1", 0.0) is None
    assert core.uplink_accepted("10.0.0.1", 0.0) is not None
    assert core.uplink_accepted("10.0.0.1", 0.0) is not None
    assert core.uplink_accepted("10.0.0.1", 0.0) is None
    stats = core.stats.uplink
    assert stats.refused == 2 and stats.refused_by_reason == {"not_allowed": 1, "limit": 1}
    assert stats.open_connections == 2


def test_site_reconnects_back_off_and_reset_after_a_connection():
    core = RelayCore([site_config(0, LinkParams())], LinkParams(), 0.0)
    core.start(0.0)
    assert core.next_action() == ConnectSite(0, 0.0)
    now, delays = 0.0, []
    for _ in range(8):
        core.site_connect_failed(0, now)
        action = core.next_action()
        assert isinstance(action, ConnectSite)
        delays.append(action.at - now)
        now = action.at
    assert delays[:3] == pytest.approx([RETRY_MIN, 2 * RETRY_MIN, 4 * RETRY_MIN]) and delays[-1] == RETRY_MAX
    conn = core.site_connected(0, "x", now)
    core.connection_lost(conn, Cause.PEER_CLOSED, "gone", now + 1)
    actions = [a for a in iter(core.next_action, None) if isinstance(a, ConnectSite)]
    assert actions == [ConnectSite(0, now + 1 + RETRY_MIN)]
    assert core.sites[0].stats.disconnects == {"peer_closed": 1}


def test_bmi_asdus_for_a_connecting_site_wait_at_most_its_t1():
    lab = Lab(2)
    bmi = lab.connect_bmi()
    lab.bmi_start(bmi)  # type: ignore[arg-type]
    lab.settle()
    lab.bmi_send(bmi, counter_asdu(BASE_CA, 1))  # type: ignore[arg-type]
    lab.bmi_send(bmi, counter_asdu(BASE_CA + 1, 2))  # type: ignore[arg-type]
    lab.settle()
    lab.connect_site(0)
    lab.settle()
    assert len(lab.stations[0].received) == 1
    assert lab.core.get_timer() <= lab.now + lab.site_params.t1  # type: ignore[operator]
    lab.advance(lab.site_params.t1)
    lab.connect_site(1)
    lab.settle()
    assert lab.stations[1].received == [] and lab.core.sites[1].stats.dropped_down == 1


def test_relay_latency_counts_the_wake_up_that_let_a_frame_go_not_the_time_it_was_held():
    """The latency histogram shows the relay's own work (ConcentratorRelayLatencyHigh):
    frames held for a full window, a BMI away or a site not connected wait for a peer,
    and that wait shows in the peers' metrics instead (chaos soak, finding 5)."""
    lab, bmi = started_lab(sites=2, site_k=12, uplink=LinkParams(k=6, w=4))
    up = lab.core.sites[0].stats.latency_up
    station = lab.stations[0]
    lab.generate(0, 10)
    lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    assert up.count == 6  # the uplink's window; 4 frames held until the BMI confirms
    lab.advance(2.0)
    lab.settle()
    assert up.count == 10 and up.total == 0.0  # 2 s held, none of it the relay's

    # The BMI stops confirming with frames in flight and waiting; 3 s later another
    # connection takes over (Ed. 2) and gets them all, again or for the first time.
    lab.generate(0, 9)
    lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert up.count == 16 and lab.core.queue.in_flight == 6 and len(lab.core.queue) == 3
    lab.advance(3.0)
    again = lab.connect_bmi()
    assert again is not None
    lab.bmi_start(again)
    lab.settle()
    assert (bmi.conn, Cause.SUPERSEDED) in lab.closed_by_core  # type: ignore[attr-defined]
    assert up.count == 25 and up.total == 0.0

    # A command for a site not connected waits in its backlog until the site is back.
    down = lab.core.sites[1].stats.latency_down
    lab.drop(lab.stations[1].conn)  # type: ignore[arg-type]
    lab.bmi_send(again, counter_asdu(BASE_CA + 1, 7))
    lab.settle()
    lab.advance(1.5)
    assert lab.connect_site(1)
    lab.settle()
    assert lab.stations[1].received == [counter_asdu(BASE_CA + 1, 7)]
    assert down.count == 1 and down.total == 0.0

    # Time between the wake-up and the write is counted: the lab writes 0.25 s later.
    lab.generate(0, 1)
    data = bytes(lab.to_core[station.conn])  # type: ignore[index]
    lab.to_core[station.conn].clear()  # type: ignore[index]
    lab.core.receive_data(station.conn, data, lab.now - 0.25)  # type: ignore[arg-type]
    lab.collect()
    assert up.count == 26 and up.total == pytest.approx(0.25)


def test_taps_see_forwarded_site_asdus_and_accepted_bmi_asdus():
    lab, bmi = started_lab()

    class Recorder:
        def __init__(self) -> None:
            self.ups: list[tuple[str, bytes]] = []
            self.downs: list[bytes] = []

        def up(self, site: str, asdu: bytes, now: float) -> None:
            self.ups.append((site, asdu))

        def down(self, asdu: bytes, now: float) -> None:
            self.downs.append(asdu)

    tap = Recorder()
    lab.core.add_tap(tap)
    lab.generate(1, 2)
    lab.bmi_send(bmi, counter_asdu(BASE_CA, 5))  # type: ignore[arg-type]
    lab.settle()
    assert tap.ups == [("site-02", counter_asdu(BASE_CA + 1, 0)), ("site-02", counter_asdu(BASE_CA + 1, 1))]
    assert tap.downs == [counter_asdu(BASE_CA, 5)]


# ------------------------------------------------------------------ window feasibility
def test_window_rule_refuses_an_uplink_w_the_sites_cannot_fill():
    sites = [LinkParams(k=12, w=8)] * 12
    ((key, expected, got),) = window_problems(LinkParams(k=600, w=400), sites)
    assert key == "uplink.w" and got == 400
    assert "at most 144" in expected and "12 sites" in expected and "10.0 s" in expected
    assert window_problems(LinkParams(k=600, w=144), sites) == []
    assert window_problems(LinkParams(k=12, w=8), sites) == []


def test_window_warning_above_what_the_sites_fill_with_a_quarter_of_them_idle():
    sites = [LinkParams(k=12, w=8)] * 12
    (warning,) = window_warnings(LinkParams(k=144, w=144), sites)
    assert warning.startswith("uplink.w 144 is above 108, what the sites can have in flight with 3 of the 12 sites")
    assert "t2 (10.0 s)" in warning and "keep w at most 108" in warning
    assert window_warnings(LinkParams(k=144, w=109), sites) != []
    assert window_warnings(LinkParams(k=144, w=108), sites) == []
    assert window_warnings(LinkParams(k=144, w=72), sites) == []
    assert window_warnings(LinkParams(k=600, w=400), sites) == []  # refused instead (window_problems)
    # The idle ones are those with the largest windows; one site alone is never "idle".
    assert idle_tolerant_w([LinkParams(k=k) for k in (4, 30, 8, 12, 12)]) == (36, 1)
    assert idle_tolerant_w([LinkParams(k=12)]) == (12, 0)
    assert window_warnings(LinkParams(k=12, w=12), [LinkParams(k=12)]) == []


def _config(w: int, k: int, sites: int) -> dict:
    return {
        "uplink": {"listen": "0.0.0.0:2404", "allowed_peers": ["10.1.0.10"], "k": k, "w": w},
        "sites": [
            {
                "name": f"site-{i:02d}",
                "common_addresses": [100 + i],
                "endpoints": [f"192.0.2.{10 + i}:2404"],
                "interruptibility": "emergency",
            }
            for i in range(1, sites + 1)
        ],
    }


def test_config_with_an_unreachable_uplink_window_is_refused_with_the_numbers():
    with pytest.raises(ConfigError) as info:
        parse_config(_config(400, 600, 12), "c.yaml")
    err = info.value
    assert err.key == "uplink.w" and err.got == 400 and "at most 144" in err.expected
    parse_config(_config(100, 600, 12), "c.yaml")


def test_check_config_command_says_why(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(400, 600, 12)))
    result = subprocess.run(
        [sys.executable, "-m", "concentrator", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "uplink.w" in result.stderr + result.stdout and "at most 144" in result.stderr + result.stdout


def test_uplink_ceiling_and_foreign_ca_keys():
    config = parse_config(_config(8, 12, 2), "c.yaml")
    assert config.uplink.max_connections == 4 and not config.uplink.close_on_foreign_ca
    data = _config(8, 12, 2)
    data["uplink"].update(max_connections=2, foreign_ca="close")
    config = parse_config(data, "c.yaml")
    assert config.uplink.max_connections == 2 and config.uplink.close_on_foreign_ca
    for key, value, expected in (("max_connections", 0, "from 1 to 64"), ("foreign_ca", "ignore", "drop or close")):
        data = _config(8, 12, 2)
        data["uplink"][key] = value
        with pytest.raises(ConfigError) as info:
            parse_config(data, "c.yaml")
        assert info.value.key == f"uplink.{key}" and expected in info.value.expected


def test_the_core_handles_a_burst_in_turns():
    lab, bmi = started_lab()
    from concentrator.iec104.apci import UFunction, encode_u
    from concentrator.relay.core import FRAMES_PER_TURN

    conn = lab.stations[0].conn
    assert conn is not None
    burst = encode_u(UFunction.TESTFR_ACT) * (FRAMES_PER_TURN + 5)
    assert lab.core.receive_data(conn, burst, lab.now) is True
    assert lab.core.receive_data(conn, b"", lab.now) is False
    lab.collect()
    assert lab.to_peer[conn].count(encode_u(UFunction.TESTFR_CON)) == FRAMES_PER_TURN + 5


def test_metrics_count_disconnects_by_cause_and_refusals_by_reason():
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring.relay_metrics import RelayMetrics

    config = parse_config(_config(8, 12, 2), "c.yaml")
    core = RelayCore(config.sites, config.uplink.params, 0.0, allows=config.uplink.allows, max_uplinks=1)
    core.start(0.0)
    bmi = core.uplink_accepted("10.1.0.10", 0.0)
    assert core.uplink_accepted("10.1.0.10", 0.0) is None and core.uplink_accepted("192.0.2.1", 0.0) is None
    site = core.site_connected(0, "192.0.2.11:2404", 0.0)
    core.receive_data(site, b"\x00", 1.0)  # not an APDU
    core.connection_lost(bmi, Cause.PEER_CLOSED, "gone", 2.0)  # type: ignore[arg-type]
    text = RelayMetrics(core.stats, config, lambda: 3.0, started_at=0.0).exposition().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("concentrator_uplink_disconnects_total", (("cause", "peer_closed"),))] == 1
    assert samples[("concentrator_uplink_disconnects_total", (("cause", "superseded"),))] == 0
    assert samples[("concentrator_uplink_refused_connections_total", (("reason", "limit"),))] == 1
    assert samples[("concentrator_uplink_refused_connections_total", (("reason", "not_allowed"),))] == 1
    key = ("concentrator_site_disconnects_total", (("cause", "bad_frame"), ("site", "site-01")))
    assert samples[key] == 1
    assert samples[("concentrator_site_disconnects_total", (("cause", "bad_frame"), ("site", "site-02")))] == 0


def test_a_command_leaves_before_the_confirmation_the_same_bmi_frame_released():
    """The BMI's command to one site carries its confirmation of another site's frame:
    the command is written first, the S-frame after (a write on loopback costs the
    writer its reader's wake-up; bench/pingpong.py measured 4-5 µs less one-way down)."""
    from concentrator.iec104.apci import SFrame, UFunction, decode, encode_i, encode_u
    from concentrator.relay.core import Transmit

    params = LinkParams()
    core = RelayCore([site_config(0, params), site_config(1, params)], params, 0.0)
    core.start(0.0)
    sites = [core.site_connected(n, "127.0.0.1:1", 0.0) for n in range(2)]
    bmi = core.uplink_accepted("127.0.0.1", 0.0)
    assert bmi is not None
    core.receive_data(bmi, encode_u(UFunction.STARTDT_ACT), 0.0)
    for conn in sites:
        core.receive_data(conn, encode_u(UFunction.STARTDT_CON), 0.0)
    core.receive_data(sites[0], encode_i(0, 0, counter_asdu(BASE_CA, 1)), 0.1)
    while core.next_action() is not None:
        pass
    command = bytes((45, 1, 6, 0)) + (BASE_CA + 1).to_bytes(2, "little") + b"\x88\x13\x00\x81"
    core.receive_data(bmi, encode_i(0, 1, command), 0.2)  # N(R) 1 confirms site 0's frame
    writes = [a for a in iter(core.next_action, None) if isinstance(a, Transmit)]
    assert [w.conn for w in writes] == [sites[1], sites[0]]
    assert decode(writes[1].data) == SFrame(1)


def test_a_closed_site_connection_is_freed_at_once_not_left_to_the_cycle_collector():
    """Its frames still pending when it closed are dropped from the uplink queue, and the
    connection must not keep the last of them (which refers back to it): such garbage is
    freed only by the collector's full collections, and mass reconnections (every uplink
    outage) let it pile up as RSS in the chaos soak (bench/SOAK.md, the traced run)."""
    lab, bmi = started_lab(sites=1, site_k=12, uplink=LinkParams(k=2, w=1))
    station = lab.stations[0]
    lab.generate(0, 6)
    lab.deliver_to_core(station.conn)  # type: ignore[arg-type]
    lab.deliver_to_peer(bmi.conn)  # type: ignore[attr-defined]
    assert lab.core.queue.in_flight == 2 and len(lab.core.queue) == 4  # the rest pending
    gc.disable()
    try:
        gc.collect()
        lab.drop(station.conn)  # type: ignore[arg-type]
        assert len(lab.core.queue) == 0 and lab.core.queue.in_flight == 2
        lab.bmi_confirm(bmi, 2)  # type: ignore[arg-type]  # what was in flight: the last references
        assert lab.core.queue.in_flight == 0 and lab.core.sites[0].conn is None
        # (SiteConn has __slots__ and no weakref: look for it among the objects alive.)
        left = [o for o in gc.get_objects() if isinstance(o, SiteConn)]
        assert left == [], [type(r).__name__ for r in gc.get_referrers(*left)]
    finally:
        gc.enable()
