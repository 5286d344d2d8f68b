"""The dossier's capture (AF_PACKET, one socket per interface) in a namespace of its own:
each loopback frame once, pcap files scapy reads back identically, the kernel's timestamps,
and a capture cut short at its memory bound says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from tests.conftest import require_root

pytestmark = pytest.mark.netns

SNIPPET = """
import json, socket, sys, time
from concentrator.evidence.capture import Capture
from concentrator.evidence.streams import Datagram, parse_frame
capture = Capture(["lo"], sys.argv[1], max_bytes=int(sys.argv[2]))
capture.start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(50):
    s.sendto(b"datagram %02d" % i, ("127.0.0.1", 30999))
    time.sleep(0.002)
time.sleep(0.2)
r = capture.stop()
payloads = [d.payload.decode() for d in map(parse_frame, r.packets) if isinstance(d, Datagram) and d.dport == 30999]
print(json.dumps({"payloads": payloads, "drops": r.kernel_drops, "truncated": r.truncated_at is not None,
                  "in_order": all(a.t <= b.t for a, b in zip(r.packets, r.packets[1:])),
                  "within": all(r.started - 1 <= p.t <= r.ended for p in r.packets), "file": r.files["lo"]}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    name = f"evcap{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def capture_in(netns: str, out: Path, max_bytes: int) -> dict:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SNIPPET, str(out), str(max_bytes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_each_loopback_frame_once_and_the_pcap_reads_back(netns: str, tmp_path: Path) -> None:
    r = capture_in(netns, tmp_path, 1 << 20)
    assert r["payloads"] == [f"datagram {i:02d}" for i in range(50)]
    assert r["drops"] == {"lo": 0} and not r["truncated"] and r["in_order"] and r["within"]
    frames = [p for p in rdpcap(r["file"]) if p.haslayer(UDP) and p[UDP].dport == 30999]
    assert [bytes(p[UDP].payload).decode() for p in frames] == r["payloads"]


def test_a_capture_beyond_its_memory_bound_stops_and_says_so(netns: str, tmp_path: Path) -> None:
    r = capture_in(netns, tmp_path, 1500)
    assert r["truncated"] and 0 < len(r["payloads"]) < 50
