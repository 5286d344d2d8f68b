"""`concentrator evidence --recheck DIR`: section 2 again, from the dossier's own files.

The operator's engineer needs neither the appliance nor our word: from DIR/capture/*.pcap
and DIR/configuration.yaml the same reassembly and matching run again, and the result is
compared with DIR/matches.json. Needs no root and touches nothing but reads DIR.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any

from .appliance import Load
from .capture import Packet
from .dossier import decode
from .match import match

_MAGIC_NS = 0xA1B23C4D
_MAGIC_US = 0xA1B2C3D4


class RecheckError(Exception):
    pass


def read_pcap(path: str, ifname: str) -> list[Packet]:
    """Frames of a classic pcap file (nanosecond or microsecond, little endian)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise RecheckError(f"{path}: not a pcap file")
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (_MAGIC_NS, _MAGIC_US):
        raise RecheckError(f"{path}: not a little-endian pcap file (magic {magic:#010x})")
    scale = 1e9 if magic == _MAGIC_NS else 1e6
    packets, at = [], 24
    while at + 16 <= len(data):
        sec, frac, caplen, _length = struct.unpack_from("<IIII", data, at)
        at += 16
        # The same float the capture computed from the kernel's nanoseconds.
        t = (sec * 1_000_000_000 + frac * (1_000_000_000 // int(scale))) / 1e9
        packets.append(Packet(t, ifname, False, data[at : at + caplen]))
        at += caplen
    return packets


def recheck(out: str, load_config: Load) -> tuple[bool, dict[str, Any]]:
    """(same result as recorded, the recomputed matching)."""
    try:
        with open(os.path.join(out, "evidence.json")) as f:
            evidence = json.load(f)
        with open(os.path.join(out, "matches.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as exc:
        raise RecheckError(f"{out}: not a dossier ({exc})") from exc
    config = load_config(os.path.join(out, "configuration.yaml"))
    if config.sha256 != evidence["config_sha256"]:
        raise RecheckError(f"{out}/configuration.yaml is not the configuration the dossier judged")
    facts = evidence["sections"][1]["facts"]
    packets: list[Packet] = []
    for path in sorted(glob.glob(os.path.join(out, "capture", "*.pcap"))):
        packets += read_pcap(path, os.path.basename(path)[: -len(".pcap")])
    packets.sort(key=lambda p: p.t)
    streams, hops, _ = decode(config, packets)
    ended = facts["truncated_at"] if facts["truncated_at"] is not None else facts["capture_ended"]
    result = match(config, streams.apdus, hops, facts["capture_started"], ended).to_json()
    return result == recorded, result
