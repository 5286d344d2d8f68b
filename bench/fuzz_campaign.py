"""Fuzz campaign against the real relay while 12 good sites stream (issue 11).

    python -m bench run fuzz_campaign                 # 1,000,000 mutated frames per side
    python -m bench run fuzz_campaign --frames 20000  # the CI size (tests/interop/test_fuzz_campaign.py)

The relay runs as its own process (`python -m concentrator relay`, log level INFO, its
log kept in a file). In this process, under trio: 12 good UPDCs (`QueueingStation`, CA
101-112, 100 ASDU/s each) and the good BMI (`CodecMaster`, started), and the fuzzers:

- site side: `--fuzz-sites` more configured sites (CA 113 on) whose UPDCs are fuzzers. Each
  keeps a real controlled-station `Link` so that most of its I-frames are in sequence and
  within k (and so reach the BMI's side of the relay), with mutated ASDUs (random type,
  VSQ, cause, originator, IOAs, body, length; CA its own or random); between them
  U- and S-frames, and with probability `--break-rate` a destructive mutation (random
  bytes, a flipped bit, a wrong length, a frame out of sequence or out of state). The
  relay closes such a connection and connects again (0.2 s later).
- BMI side: `--fuzz-bmis` extra BMI connections from the BMI's address (allowed) that
  never start data transfer: TESTFR acts and cons, S-frames, STOPDT acts, with
  mutated fields, and destructive mutations as above. A STARTDT act is filtered out of
  their byte stream: it would rightly move the active role to the fuzzer (IEC 104 Ed. 2)
  and close the good BMI, which is the protocol, not a fault.

Each side's frames are cut at random byte boundaries into writes. Both fuzzers read what
the relay sends them (the budgets would close them otherwise: tests/interop/
test_relay_floods.py covers that). Reported: frames written per side and per class,
connections, relay exits (0: it must live), good-site ASDUs lost, duplicated or out of
order at the BMI (each CA's counters must be exactly 0..n-1, in order), good sites'
reconnections, the relay's peak RSS (VmHWM) and CPU, and its log volume (lines, bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import trio

from concentrator.iec104.apci import UFunction, encode_i, encode_s, encode_u
from concentrator.iec104.link import Link, LinkParams, Role
from tests.peers.codec_peers import CodecMaster, QueueingStation, counter_of

HOST = "127.0.0.1"
GOOD_FIRST_CA = 101
STARTDT_ACT = encode_u(UFunction.STARTDT_ACT)
# A fuzz site's link: the relay's defaults. Its frames go in batches of this many.
BATCH = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_figures(pid: int) -> dict[str, float]:
    """CPU seconds, current and peak resident memory (MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
    }


# ------------------------------------------------------------------------- mutations
class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counts: Counter[str] = Counter()

    def asdu(self, own_ca: int) -> bytes:
        """A mutated ASDU: every header field random (CA mostly the site's own, so that
        it passes the foreign-CA check and is forwarded), random objects."""
        r = self.rng
        ca = own_ca if r.random() < 0.8 else r.randrange(65536)
        body = r.randbytes(r.choice((0, 3, 4, 7, 10, 15, r.randrange(244))))
        return (
            bytes((r.randrange(256), r.randrange(256), r.randrange(256), r.randrange(256)))
            + ca.to_bytes(2, "little")
            + body
        )

    def harmless(self, confirm: int = 0) -> bytes:
        """A U- or S-frame a stopped or started link accepts from its peer; `confirm` is
        the N(R) that is right for it (what the relay has sent on that connection)."""
        r = self.rng
        kind = r.randrange(4)
        self.counts[("testfr_act", "testfr_con", "s_frame", "testfr_act")[kind]] += 1
        if kind == 1:
            return encode_u(UFunction.TESTFR_CON)  # unsolicited: ignored, as lib60870 does
        if kind == 2:
            return encode_s(confirm)
        return encode_u(UFunction.TESTFR_ACT)

    def destructive(self, own_ca: int) -> bytes:
        """A frame the relay must refuse (it closes the connection), or that may pass."""
        r = self.rng
        kind = r.randrange(7)
        name = ("random_bytes", "bit_flip", "bad_length", "i_out_of_sequence", "random_u", "s_random_nr", "short")[kind]
        self.counts[name] += 1
        if kind == 0:
            return r.randbytes(r.randrange(1, 260))
        if kind == 1:
            valid = (encode_u(UFunction.TESTFR_ACT), encode_s(0), encode_i(0, 0, self.asdu(own_ca)))
            frame = bytearray(r.choice(valid))
            frame[r.randrange(len(frame))] ^= 1 << r.randrange(8)
            return bytes(frame)
        if kind == 2:
            frame = bytearray(encode_i(r.randrange(32768), 0, self.asdu(own_ca)))
            frame[1] = r.randrange(256)
            return bytes(frame)
        if kind == 3:
            return encode_i(r.randrange(32768), r.randrange(32768), self.asdu(own_ca))
        if kind == 4:
            return bytes((0x68, 4, r.randrange(256) | 0x03, r.randrange(256), r.randrange(256), r.randrange(256)))
        if kind == 5:
            return encode_s(r.randrange(1, 32768))
        return bytes((0x68, r.randrange(4))) + r.randbytes(r.randrange(4))

    async def write_split(self, stream: trio.SocketStream, data: bytes) -> None:
        """Write `data` cut at random byte boundaries."""
        r = self.rng
        while data:
            cut = r.randrange(1, len(data) + 1)
            await stream.send_all(data[:cut])
            data = data[cut:]


class SideStats:
    def __init__(self) -> None:
        self.frames = 0  # written to the relay, all kinds
        self.mutated = 0  # of which mutated: random ASDUs in well-framed I-frames, and destructive frames
        self.connections = 0
        self.closed_by_relay = 0

    def report(self, mutator: Mutator) -> dict[str, Any]:
        return {"frames": self.frames, "mutated": self.mutated, "connections": self.connections,
                "closed_by_relay": self.closed_by_relay, "kinds": dict(mutator.counts)}  # fmt: skip


# ------------------------------------------------------------------------- site fuzzer
class FuzzSite:
    """A UPDC that sends mutated frames to the relay; one connection at a time."""

    def __init__(self, ca: int, mutator: Mutator, stats: SideStats, break_rate: float, target: int) -> None:
        self.ca = ca
        self.mutator = mutator
        self.stats = stats
        self.break_rate = break_rate
        self.target = target
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=HOST))
            task_status.started(listeners[0].socket.getsockname()[1])

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        link = Link(Role.CONTROLLED, LinkParams(), now=trio.current_time())
        started = trio.Event()
        m = self.mutator

        async def read() -> None:
            nonlocal acked
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("closed by the relay")
                link.receive_data(data, trio.current_time())
                while link.next_event() is not None:
                    pass
                if link.started:
                    started.set()
                acked.set()

        acked = trio.Event()
        stats = self.stats
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                while not started.is_set():
                    await stream.send_all(link.data_to_send())
                    await trio.sleep(0.005)
                while stats.mutated < self.target:
                    # As many mutated I-frames as the window takes, a few U/S-frames, and
                    # now and then a destructive frame; then wait for the window to open.
                    out = bytearray(link.data_to_send())
                    frames = mutated = 0
                    while link.can_send or m.rng.random() < 0.5:
                        if m.rng.random() < self.break_rate:
                            out += m.destructive(self.ca)
                            mutated += 1
                        elif link.can_send:
                            m.counts["i_frame_mutated_asdu"] += 1
                            link.send_asdu(m.asdu(self.ca), trio.current_time())
                            out += link.data_to_send()
                            mutated += 1
                        else:
                            out += m.harmless(link.recv_seq)  # the relay sends broadcast commands
                        frames += 1
                    await m.write_split(stream, bytes(out))
                    stats.frames += frames
                    stats.mutated += mutated
                    acked = trio.Event()
                    with trio.move_on_after(0.5):
                        await acked.wait()
                await trio.sleep_forever()  # done: stay connected (a close would count as the relay's)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stats.closed_by_relay += 1
        finally:
            await trio.aclose_forcefully(stream)


# ------------------------------------------------------------------------- BMI fuzzer
async def fuzz_commands(master: CodecMaster, mutator: Mutator, stats: SideStats, target: int) -> None:
    """The good BMI's own started connection: mutated ASDUs (random type, VSQ, cause,
    originator, CA, objects; at least the 6 header octets, which the relay needs to route
    them: fewer is a malformed ASDU that closes the BMI connection) as fast as the window
    takes them. The relay routes them by CA to a site, to every site (65535), or answers
    them negatively (unknown CA)."""
    assert master.session is not None
    link, m = master.session.link, mutator
    while stats.mutated < target:
        while link.can_send:
            r = m.rng
            ca = r.choice((101, 105, 112, 65535, r.randrange(65536)))
            master.send(m.asdu(ca))
            m.counts["i_frame_mutated_asdu"] += 1
            stats.frames += 1
            stats.mutated += 1
        await trio.sleep(0.001)


async def fuzz_bmi(port: int, mutator: Mutator, stats: SideStats, break_rate: float, target: int) -> None:
    """Extra BMI connections that never start: mutated frames until the relay closes
    one, then the next."""
    m = mutator
    while stats.mutated < target:
        try:
            stream = await trio.open_tcp_stream(HOST, port)
        except OSError:
            await trio.sleep(0.01)  # refused at the ceiling while the last one closes
            continue
        stats.connections += 1

        async def read(stream: trio.SocketStream = stream) -> None:
            while await stream.receive_some(65536):
                pass
            raise trio.BrokenResourceError("closed by the relay")

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                while stats.mutated < target:
                    out = bytearray()
                    for _ in range(BATCH):
                        if m.rng.random() < break_rate:
                            out += m.destructive(0)
                            stats.mutated += 1
                        elif m.rng.random() < 0.05:
                            m.counts["stopdt_act"] += 1
                            out += encode_u(UFunction.STOPDT_ACT)  # stopped already: confirmed
                        else:
                            out += m.harmless()
                    # A STARTDT act would take the active role from the good BMI (Ed. 2).
                    data = bytes(out).replace(STARTDT_ACT, encode_u(UFunction.TESTFR_ACT))
                    await m.write_split(stream, data)
                    stats.frames += BATCH
                    await trio.sleep(0.001)
                    if stats.mutated >= target:
                        break
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            stats.closed_by_relay += 1
        finally:
            await trio.aclose_forcefully(stream)


# ------------------------------------------------------------------------- campaign
def _config(uplink_port: int, metrics_port: int, ports: list[int]) -> str:
    lines = [
        "uplink:",
        f'  listen: "{HOST}:{uplink_port}"',
        f'  allowed_peers: ["{HOST}"]',
        "  max_connections: 16",
        "sites:",
    ]
    for n, port in enumerate(ports):
        lines += [
            f"  - name: site-{n + 1:02d}",
            f"    common_addresses: [{GOOD_FIRST_CA + n}]",
            f'    endpoints: ["{HOST}:{port}"]',
            "    interruptibility: instantaneous",
        ]
    lines += ["metrics:", f'  listen: "{HOST}:{metrics_port}"']
    return "\n".join(lines) + "\n"


def _metric_sum(metrics_port: int, name: str, sites: int) -> dict[str, float]:
    """A per-site counter of the relay's metrics, summed over each of the first `sites`."""
    text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read().decode()
    good = {f'site="site-{n + 1:02d}"' for n in range(sites)}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = line[len(name) + 1 : line.index("}")]
            site = labels.split(",")[0]
            if site in good:
                out[site] = out.get(site, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def disconnects(metrics_port: int) -> dict[str, dict[str, float]]:
    """Connections the relay ended, by cause: the fuzz sites' (summed) and the BMI's."""
    text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[str, float]] = {"sites": {}, "uplink": {}}
    for line in text.splitlines():
        for side, name in (
            ("sites", "concentrator_site_disconnects_total{"),
            ("uplink", "concentrator_uplink_disconnects_total{"),
        ):
            if line.startswith(name) and (count := float(line.rsplit(" ", 1)[1])):
                cause = line.split('cause="')[1].split('"')[0]
                out[side][cause] = out[side].get(cause, 0.0) + count
    return out


def check_order(master: CodecMaster, stations: list[QueueingStation]) -> dict[str, int]:
    """Good-site ASDUs at the BMI: each CA's counters must be exactly 0..n-1, in order."""
    by_ca: dict[int, list[int]] = {s.common_address: [] for s in stations}
    for asdu in master.asdus():
        if len(asdu) >= 13 and (ca := asdu[4] | asdu[5] << 8) in by_ca and asdu[0] == 15:
            by_ca[ca].append(counter_of(asdu)[1])
    lost = duplicated = reordered = 0
    for station in stations:
        got = by_ca[station.common_address]
        sent = station._next_sequence
        lost += sent - len(set(got))
        duplicated += len(got) - len(set(got))
        reordered += sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
    return {"good_asdus": sum(len(v) for v in by_ca.values()), "lost": lost, "duplicated": duplicated,
            "reordered": reordered}  # fmt: skip


async def campaign(
    frames: int, *, good_sites: int = 12, rate: float = 100.0, fuzz_sites: int = 4, fuzz_bmis: int = 4,
    break_rate: float = 0.002, seed: int = 1, progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    site_side, bmi_side = SideStats(), SideStats()
    site_mutator, bmi_mutator = Mutator(random.Random(rng.random())), Mutator(random.Random(rng.random()))
    stations = [QueueingStation(GOOD_FIRST_CA + n) for n in range(good_sites)]
    fuzzers = [
        FuzzSite(GOOD_FIRST_CA + good_sites + n, site_mutator, site_side, break_rate, frames) for n in range(fuzz_sites)
    ]
    log_file = tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False)
    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(station.serve) for station in stations]
        ports += [await nursery.start(fuzzer.serve) for fuzzer in fuzzers]
        uplink_port, metrics_port = _free_port(), _free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(_config(uplink_port, metrics_port, ports))
        relay = subprocess.Popen(
            [sys.executable, "-m", "concentrator", "--log-level", "INFO", "relay", "--config", f.name],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        peak_rss = 0.0
        try:
            master = CodecMaster(LinkParams(t2=0.2))
            await master.run_started(nursery, HOST, uplink_port)

            async def stream(station: QueueingStation) -> None:
                next_at = trio.current_time()
                while True:
                    station.enqueue_counter()
                    next_at += 1 / rate
                    await trio.sleep_until(next_at)

            streams = trio.CancelScope()

            async def streaming() -> None:
                with streams:
                    async with trio.open_nursery() as inner:
                        for station in stations:
                            inner.start_soon(stream, station)

            nursery.start_soon(streaming)
            await trio.sleep(1)
            before = proc_figures(relay.pid)
            started_at = time.monotonic()
            async with trio.open_nursery() as fuzzing:
                for _ in range(fuzz_bmis):
                    fuzzing.start_soon(fuzz_bmi, uplink_port, bmi_mutator, bmi_side, break_rate, frames)
                fuzzing.start_soon(fuzz_commands, master, bmi_mutator, bmi_side, frames)

                async def watch() -> None:
                    nonlocal peak_rss
                    while site_side.mutated < frames or bmi_side.mutated < frames:
                        if relay.poll() is not None:
                            raise RuntimeError(f"the relay exited with {relay.returncode}")
                        peak_rss = max(peak_rss, proc_figures(relay.pid)["rss_mib"])
                        if progress:
                            print(f"mutated: site {site_side.mutated} bmi {bmi_side.mutated} rss {peak_rss:.1f}",
                                  file=sys.stderr)  # fmt: skip
                        await trio.sleep(1)
                    fuzzing.cancel_scope.cancel()

                fuzzing.start_soon(watch)
            fuzz_seconds = time.monotonic() - started_at
            streams.cancel()
            # Every good ASDU the stations sent must reach the BMI.
            with trio.move_on_after(30):
                while not all(station.confirmed_all for station in stations):
                    await trio.sleep(0.1)
            after = proc_figures(relay.pid)
            reconnects = _metric_sum(metrics_port, "concentrator_site_connections_total", good_sites)
            ended = disconnects(metrics_port)
            log_file.flush()
            log = Path(log_file.name).read_bytes()
            result = {
                "frames_per_side_target": frames,
                "break_rate": break_rate,
                "seed": seed,
                "fuzz_seconds": round(fuzz_seconds, 1),
                "site_side": site_side.report(site_mutator),
                "bmi_side": bmi_side.report(bmi_mutator),
                "relay_closed_by_cause": ended,
                "relay_exits": 0 if relay.poll() is None else 1,
                "good_sites": good_sites,
                "good_sites_confirmed_all": all(station.confirmed_all for station in stations),
                "good_site_connections": sorted(set(reconnects.values())),
                **check_order(master, stations),
                "relay_before": before,
                "relay_after": after,
                "relay_rss_max_sampled_mib": peak_rss,
                "log_lines": log.count(b"\n"),
                "log_bytes": len(log),
                "log_tracebacks": log.count(b"Traceback"),
            }  # fmt: skip
        finally:
            if relay.poll() is None:
                os.killpg(relay.pid, signal.SIGTERM)
                relay.wait(10)
            os.unlink(f.name)
            os.unlink(log_file.name)
        nursery.cancel_scope.cancel()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="mutated frames per side, at least")
    parser.add_argument("--break-rate", type=float, default=0.002, help="share of destructive mutations")
    parser.add_argument("--fuzz-sites", type=int, default=8)
    parser.add_argument("--fuzz-bmis", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = trio.run(
        lambda: campaign(
            args.frames, fuzz_sites=args.fuzz_sites, fuzz_bmis=args.fuzz_bmis, break_rate=args.break_rate,
            seed=args.seed, progress=True,
        )
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    ok = result["relay_exits"] == 0 and result["lost"] == result["duplicated"] == result["reordered"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
