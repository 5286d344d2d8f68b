"""Availability a viewer can see: retained status topics per site and for the mirror
(its last will), with the relay, simulated UPDCs and BMI, and a real Mosquitto."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import trio

from concentrator.sim.updc import UpdcSimulator
from tests.helpers import wait_for

from .broker import PREFIX, Broker
from .clients import Subscriber
from .test_mirror import running


def latest(viewer: Subscriber, topic: str) -> dict[str, Any] | None:
    found = [m.payload for m in viewer.statuses() if m.topic == topic]
    return found[-1] if found else None


def mirror_children() -> list[int]:
    """The mirror processes this test started (children of this process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == os.getpid() and b"concentrator.mirror.process" in cmdline:
                pids.append(int(entry.name))
    return pids


async def test_status_topics_say_why_data_stopped(updcs: list[UpdcSimulator], broker: Broker):
    mirror_topic = f"{PREFIX}/status"
    site1, site2 = f"{PREFIX}/north/site-01/status", f"{PREFIX}/south/site-02/status"
    with Subscriber(broker, "viewer", f"{PREFIX}/#") as viewer:
        async with running(updcs, broker) as (relay, bmi):

            def state(topic: str) -> str | None:
                payload = latest(viewer, topic)
                return None if payload is None else payload["state"]

            await wait_for(lambda: state(mirror_topic) == "online", 20, "mirror online")
            await wait_for(lambda: state(site1) == state(site2) == "online", 10, "both sites online")
            assert latest(viewer, site1)["detail"] == "started" and latest(viewer, site1)["area"] == "north"

            await trio.to_thread.run_sync(updcs[1].stop)  # one site goes away
            await wait_for(lambda: state(site2) == "site down", 10, "site-02 down")
            assert state(site1) == "online"

            await trio.to_thread.run_sync(bmi.stop)  # the BMI goes: the relay disconnects every site
            await wait_for(lambda: state(site1) == state(site2) == "uplink not started", 10, "uplink not started")

            # The mirror process dies without a word: the broker publishes its will.
            [pid] = mirror_children()
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: state(mirror_topic) == "offline", 10, "the will: offline")
            # The relay starts a new one, which says online again.
            await wait_for(lambda: state(mirror_topic) == "online", 20, "mirror online again")

    # The relay stopped: its mirror said goodbye, or the broker said it for it (the will):
    # retained, so a viewer arriving later sees it. (The DISCONNECT: test_diagnostics.py.)
    with Subscriber(broker, "viewer", mirror_topic, client_id="late-viewer") as late:
        await wait_for(lambda: latest(late, mirror_topic) is not None, 10, "the retained mirror status")
        assert latest(late, mirror_topic)["state"] == "offline"
