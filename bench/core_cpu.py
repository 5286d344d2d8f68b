"""CPU per ASDU of the relay's decisions alone: `RelayCore` driven in-process, no sockets.

    python -m bench run core_cpu [--sites 1000] [--objects 100] [--repeats 5]   # from the checkout's root

The end-to-end figures (bench/run_all.py) include the kernel's loopback and trio, and move
with whatever else runs on the shared machine; this one times only the calls into the
core (`receive_data` and reading its actions), so that a change to the core's hot path
(framer, link, uplink queue, statistics) can be measured on its own. Two loads:

- storm:   every site sends its objects as fast as its k window allows, one read per
           window's worth of frames (the interrogation storm);
- nominal: one frame per read (sites sending now and then, as at 1,000 ASDU/s).

The peers are plain byte strings (built outside the timed calls); the BMI confirms every
w frames, as the load generator's does; when the core announces an earlier deadline
(`TimerAt`), `get_timer()` is called and timed, as the driver's timer task does. Every
ASDU is checked at the BMI end: byte for byte, none lost, per-site order. The minimum
of the repeats is reported (least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import gc
import struct
import time

from concentrator.config import Endpoint, SiteConfig
from concentrator.iec104.apci import UFunction, encode_i, encode_s, encode_u
from concentrator.iec104.link import LinkParams
from concentrator.relay.core import RelayCore, TimerAt, Transmit

K, W = 12, 8
BASE_CA = 1000
_FLOAT = struct.Struct("<f")


def asdu(ca: int, n: int) -> bytes:
    """Alternately a measured float with QDS (type 13, counted by the quality
    statistics) and a bitstring (type 7), both carrying `n` to check order."""
    if n % 2:
        return bytes((13, 1, 3, 0)) + ca.to_bytes(2, "little") + n.to_bytes(3, "little") + _FLOAT.pack(n) + b"\x00"
    return bytes((7, 1, 3, 0)) + ca.to_bytes(2, "little") + n.to_bytes(3, "little") + n.to_bytes(4, "little") + b"\x00"


def frames_to(data: bytes) -> list[tuple[int, bytes]]:
    """(kind octet, APDU) of each frame in `data` (the relay writes whole frames)."""
    out, at = [], 0
    while at < len(data):
        end = at + 2 + data[at + 1]
        out.append((data[at + 2], data[at:end]))
        at = end
    return out


def run(sites: int, objects: int, per_read: int) -> tuple[float, int]:
    """(seconds inside the core, ASDUs relayed) for one storm."""
    params = LinkParams(k=K, w=W)
    configs = [SiteConfig(f"s{n}", (BASE_CA + n,), (Endpoint("127.0.0.1", 1),), "A", params) for n in range(sites)]
    core = RelayCore(configs, params, 0.0)
    now = 0.0
    core.start(now)
    site_conn = [core.site_connected(n, "127.0.0.1:1", now) for n in range(sites)]
    by_conn = {c: n for n, c in enumerate(site_conn)}
    bmi = core.uplink_accepted("127.0.0.1", now)
    assert bmi is not None
    # Pre-built traffic: each site's I-frames (N(S) = n, N(R) = 0).
    payload = [[asdu(BASE_CA + s, n) for n in range(objects)] for s in range(sites)]
    frames = [[encode_i(n, 0, payload[s][n]) for n in range(objects)] for s in range(sites)]
    sent = [0] * sites  # frames sent by each site
    confirmed = [0] * sites  # frames the relay confirmed to each site
    started = [False] * sites
    got: list[list[bytes]] = [[] for _ in range(sites)]
    bmi_received = bmi_confirmed = 0
    core_s = 0.0
    inbox: dict[int, list[bytes]] = {}

    def call(conn: int, data: bytes) -> None:
        nonlocal core_s
        t = time.perf_counter()
        more = core.receive_data(conn, data, now)
        actions = []
        while (action := core.next_action()) is not None:
            actions.append(action)
        if any(type(action) is TimerAt for action in actions):
            core.get_timer()  # what the driver's timer task does when woken for it
        core_s += time.perf_counter() - t
        assert not more
        for action in actions:
            if type(action) is Transmit:
                inbox.setdefault(action.conn, []).append(action.data)

    def deliver() -> None:
        nonlocal bmi_received
        while inbox:
            conn, chunks = inbox.popitem()
            for kind, apdu in frames_to(b"".join(chunks)):
                if conn == bmi:
                    if kind == 0x0B:  # STARTDT con
                        continue
                    a = apdu[6:]
                    s = (a[4] | a[5] << 8) - BASE_CA
                    got[s].append(a)
                    bmi_received += 1
                elif kind == 0x07:  # STARTDT act to a site
                    started[by_conn[conn]] = True
                    call(conn, encode_u(UFunction.STARTDT_CON))
                elif kind == 0x01:  # S-frame
                    confirmed[by_conn[conn]] = (apdu[4] >> 1) | (apdu[5] << 7)
                elif kind == 0x43:
                    call(conn, encode_u(UFunction.TESTFR_CON))

    gc.collect()
    core.get_timer()  # the driver asks once at start
    call(bmi, encode_u(UFunction.STARTDT_ACT))
    deliver()
    assert all(started)
    total = sites * objects
    while bmi_received < total:
        for s in range(sites):
            window = K - (sent[s] - confirmed[s])
            n = min(window, objects - sent[s])
            while n > 0:
                step = min(n, per_read)
                call(site_conn[s], b"".join(frames[s][sent[s] : sent[s] + step]))
                sent[s] += step
                n -= step
        deliver()
        while bmi_received - bmi_confirmed >= W or (bmi_received == total and bmi_confirmed < total):
            bmi_confirmed = min(bmi_received, bmi_confirmed + W)
            call(bmi, encode_s(bmi_confirmed % 32768))
            deliver()
        now += 0.001
    for s in range(sites):
        if got[s] != payload[s]:
            raise AssertionError(f"site {s}: ASDUs at the BMI differ from those sent (bytes, loss or order)")
    return core_s, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for load, per_read in (("storm", K), ("nominal", 1)):
        times = []
        for _ in range(args.repeats):
            seconds, asdus = run(args.sites, args.objects, per_read)
            times.append(seconds / asdus * 1e6)
        print(f"{load}: {min(times):.2f} µs per ASDU in the core (min of {args.repeats}; "
              f"runs {', '.join(f'{t:.2f}' for t in times)}); {args.sites} sites x {args.objects}, "
              "byte identity, no loss, order: checked")  # fmt: skip


if __name__ == "__main__":
    main()
