"""An independent decoder reads what the relay sent: tshark captures the uplink on
loopback and dissects it (`iec60870_104`), scapy decodes the same bytes, and both find
exactly the ASDUs the sites sent."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio
from scapy.contrib.scada.iec104 import IEC104_I_Message_SingleIOA

from concentrator.iec104.asdu import common_address
from concentrator.relay.driver import Relay
from tests.conftest import require_root, require_tool
from tests.helpers import free_port, relay_config, wait_for
from tests.peers.codec_peers import CodecMaster, QueueingStation, counter_asdu

SITES = 3
PER_SITE = 40


async def start_capture(tshark: str, port: int, pcap: Path) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [tshark, "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap)],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(15):
        while b"Capturing on" not in seen:
            chunk = await process.stderr.receive_some(1024)
            assert chunk, f"tshark ended: {seen!r}"
            seen += chunk
    # dumpcap says "Capturing on" a moment before its filter is in place.
    await trio.sleep(0.5)
    return process


def tshark_fields(tshark: str, pcap: Path, port: int, fields: list[str], display_filter: str) -> list[list[str]]:
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            "-d",
            f"tcp.port=={port},iec60870_104",
            "-Y",
            display_filter,
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=;",
        ]
        + [arg for f in fields for arg in ("-e", f)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


async def test_tshark_and_scapy_read_the_relayed_frames_as_the_sites_sent_them(tmp_path: Path):
    require_root()
    tshark = require_tool("tshark", "tshark")
    port = free_port()
    pcap = tmp_path / "uplink.pcap"
    async with trio.open_nursery() as nursery:
        stations = [QueueingStation(101 + n) for n in range(SITES)]
        ports = [await nursery.start(station.serve) for station in stations]
        relay = Relay(relay_config(ports, uplink_port=port))
        await nursery.start(relay.run)
        capture = await start_capture(tshark, port, pcap)
        master = CodecMaster()
        await nursery.start(lambda task_status: master.run("127.0.0.1", port, task_status=task_status))
        await wait_for(lambda: all(s.stats.state == "started" for s in relay.sites), what="sites started")
        sent = []
        for n in range(PER_SITE):
            for station in stations:
                asdu = counter_asdu(station.common_address, n)
                station.enqueue(asdu)
                sent.append(asdu)
        await wait_for(lambda: len(master.received) == len(sent), what="every ASDU at the BMI")
        await wait_for(lambda: all(s.confirmed_all for s in stations), what="all confirmed")
        await trio.sleep(0.3)
        capture.send_signal(signal.SIGINT)  # SIGINT lets tshark flush the file
        with trio.fail_after(10):
            await capture.wait()
        nursery.cancel_scope.cancel()

    # tshark's own dissector: every I-frame from the relay is valid IEC 104, with the
    # type, CA and counter value the site sent, and nothing malformed anywhere.
    assert tshark_fields(tshark, pcap, port, ["frame.number"], "_ws.malformed || _ws.expert.severity >= error") == []
    rows = tshark_fields(
        tshark,
        pcap,
        port,
        ["iec60870_104.type", "iec60870_asdu.typeid", "iec60870_asdu.addr", "iec60870_asdu.bcr.count"],
        f"tcp.srcport == {port} && iec60870_asdu",
    )
    dissected = []
    for types, typeids, addrs, counts in rows:
        for kind, typeid, addr, count in zip(
            types.split(";"), typeids.split(";"), addrs.split(";"), counts.split(";"), strict=True
        ):
            assert int(kind, 16) == 0  # I-frame
            dissected.append((int(typeid), int(addr), int(count)))
    expected = [(15, a[4] | a[5] << 8, int.from_bytes(a[9:13], "little")) for a in sent]
    assert by_site(dissected, lambda row: row[1]) == by_site(expected, lambda row: row[1])

    # The raw bytes of the relay's side of the stream, decoded by scapy: the ASDUs are
    # byte-identical to the sites'.
    payload = bytes.fromhex(
        "".join(
            row[0]
            for row in tshark_fields(tshark, pcap, port, ["tcp.payload"], f"tcp.srcport == {port} && tcp.len > 0")
        )
    )
    relayed = []
    at = 0
    while at < len(payload):
        length = payload[at + 1] + 2
        apdu = payload[at : at + length]
        if not apdu[2] & 1:
            message = IEC104_I_Message_SingleIOA(apdu)
            assert message.type_id == 15 and message.io[0].information_object_address == 7001
            relayed.append(apdu[6:])
        at += length
    assert by_site(relayed, common_address) == by_site(sent, common_address)


T = TypeVar("T")


def by_site(items: list[T], ca_of: Callable[[T], int]) -> dict[int, list[T]]:
    """Sites interleave freely on the uplink; each site's own order must hold."""
    grouped: dict[int, list[T]] = {}
    for item in items:
        grouped.setdefault(ca_of(item), []).append(item)
    return grouped
